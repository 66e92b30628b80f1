"""BatchMixUp against a naive blend of the batch written out here, through mmdet's
DetDataPreprocessor as a config uses it."""
import random

import pytest
import torch
from mmdet.models.data_preprocessors import DetDataPreprocessor
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import HorizontalBoxes
from mmengine.structures import InstanceData

from detr_plugin.models.data_preprocessors import BatchMixUp  # noqa: F401  (registers it)

MEAN, STD = [10.0, 20.0, 30.0], [2.0, 4.0, 8.0]
BOXES = [[[1, 2, 5, 6], [0, 0, 3, 3]], [], [[4, 4, 7, 8]]]  # the second image has no objects


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, 8, 10), generator=generator, dtype=torch.uint8)
              for _ in BOXES]
    samples = []
    for i, boxes in enumerate(BOXES):
        sample = DetDataSample(metainfo=dict(img_shape=(8, 10)))
        sample.gt_instances = InstanceData(
            bboxes=HorizontalBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)),
            labels=torch.full((len(boxes),), i, dtype=torch.long))
        samples.append(sample)
    return dict(inputs=images, data_samples=samples)


def preprocess(data, **mixup):
    preprocessor = DetDataPreprocessor(mean=MEAN, std=STD, batch_augments=[
        dict(type='detr_plugin.BatchMixUp', **mixup)])
    return preprocessor(data, training=True)


def naive_mixup(images, beta):
    """Image i blended with image i - 1 (the first with the last), normalized afterwards."""
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    out = []
    for i in range(len(images)):
        blended = beta * images[i].double() + (1 - beta) * images[i - 1].double()
        out.append((blended - mean.double()) / std.double())
    return torch.stack(out)


def test_images_blended_and_objects_concatenated():
    data = batch()
    images = [img.clone() for img in data['inputs']]
    out = preprocess(data, prob=1.0, ratio_range=(0.4, 0.4))
    torch.testing.assert_close(out['inputs'].double(), naive_mixup(images, 0.4), atol=1e-5,
                               rtol=0)
    gts = [sample.gt_instances for sample in out['data_samples']]
    # own objects first, then those of the previous image (image 0's previous is image 2)
    assert gts[0].bboxes.tolist() == BOXES[0] + BOXES[2] and gts[0].labels.tolist() == [0, 0, 2]
    assert gts[1].bboxes.tolist() == BOXES[0] and gts[1].labels.tolist() == [0, 0]
    assert gts[2].bboxes.tolist() == BOXES[2] and gts[2].labels.tolist() == [2]


@pytest.mark.parametrize('seed', range(3))
def test_ratio_as_deim_draws_it(seed):
    """random.random() < prob, then round(uniform(0.45, 0.55), 6), from Python's generator."""
    random.seed(seed)
    random.random()
    beta = round(random.uniform(0.45, 0.55), 6)
    data = batch(seed)
    images = [img.clone() for img in data['inputs']]
    random.seed(seed)
    out = preprocess(data, prob=1.0)
    torch.testing.assert_close(out['inputs'].double(), naive_mixup(images, beta), atol=1e-5,
                               rtol=0)


def test_left_alone_without_the_draw_or_a_partner():
    data = batch()
    images = torch.stack(data['inputs']).double()
    out = preprocess(data, prob=0.0)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out['inputs'].double(), (images - mean) / std)
    assert [len(s.gt_instances) for s in out['data_samples']] == [2, 0, 1]
    single = dict(inputs=data['inputs'][:1], data_samples=batch()['data_samples'][:1])
    assert len(preprocess(single, prob=1.0)['data_samples'][0].gt_instances) == 2


def test_probability_is_checked():
    with pytest.raises(ValueError, match='prob must be in'):
        BatchMixUp(prob=1.5)
