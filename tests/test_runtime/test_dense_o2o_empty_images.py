"""Images left without a box in DEIM's Dense O2O training: the DEIM config's MultiImageMixDataset
keeps an image whose only box shrinks below 1 px, with no box, as DEIM's SanitizeBoundingBoxes
does (mmdet's FilterAnnotations default would make the wrapper raise), and the DEIM model takes a
training step on images without boxes."""
import json

import mmcv
import numpy as np
import pytest
import torch
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import HorizontalBoxes
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

from detr_plugin.registry import DATASETS, MODELS, TRANSFORMS

DEIM_S = 'configs/deim/deim_dfine_hgnetv2-s_8xb4-132e_coco.py'

# (width, height, COCO xywh boxes). Image 0's 2 px box is at most 2 * 640 / 1300 = 0.98 px wide
# after the 640 x 640 resize: zoom-out only shrinks it, and no IoU-crop window fits the image
# (its width / height is at least 0.3 * 1300 / 40 = 9.75, above the crop's maximum of 2), so
# the filter after the resize (sides over 1 px) removes it; DEIM's torchvision SanitizeBoundingBoxes(min_size=1)
# drops it too and keeps the image (run on the original: a (0, 4) target on the 640 x 640 image).
IMAGES = [(1300, 40, [[600, 10, 2, 2]]),  # its only box vanishes
          (96, 64, []),                   # no box at all
          (96, 64, [[20, 16, 40, 30]])]


def write_tiny_coco(root):
    (root / 'train').mkdir(parents=True)
    (root / 'annotations').mkdir()
    images, annotations = [], []
    rng = np.random.default_rng(0)
    for i, (w, h, boxes) in enumerate(IMAGES):
        mmcv.imwrite(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), str(root / f'train/{i}.png'))
        images.append(dict(id=i, file_name=f'{i}.png', width=w, height=h))
        for box in boxes:
            annotations.append(dict(id=len(annotations) + 1, image_id=i, category_id=1, bbox=box,
                                    area=box[2] * box[3], iscrowd=0))
    coco = dict(images=images, annotations=annotations, categories=[dict(id=1, name='thing')])
    (root / 'annotations/train.json').write_text(json.dumps(coco))


def deim_train_dataset(root, keep_empty=None):
    """The DEIM-S config's training dataset on the tiny data, without Mosaic (whose three random
    partners would bring their boxes into any sample); ``keep_empty`` given: that value in every
    FilterAnnotations instead of the config's."""
    write_tiny_coco(root)
    dataset = Config.fromfile(DEIM_S).train_dataloader.dataset
    dataset.dataset.update(data_root=f'{root}/', ann_file='annotations/train.json',
                           data_prefix=dict(img='train/'), metainfo=dict(classes=('thing', )))
    assert dataset.type == 'MultiImageMixDataset' and dataset.pipeline[0].type == 'Mosaic'
    dataset.pipeline[0].prob = 0.0
    for transform in dataset.pipeline:
        if transform.type == 'FilterAnnotations' and keep_empty is not None:
            transform.keep_empty = keep_empty
    return DATASETS.build(dataset)


def test_image_whose_boxes_vanish_is_kept_without_boxes(tmp_path):
    dataset = deim_train_dataset(tmp_path)
    np.random.seed(0)
    for _ in range(4):  # other zoom-out / crop / flip draws
        for i in range(len(IMAGES)):
            sample = dataset[i]
            assert sample['data_samples'].img_id == i  # this image, not another one refetched
            assert sample['inputs'].shape == (3, 640, 640)
            gt = sample['data_samples'].gt_instances
            assert gt.bboxes.shape == (0 if i < 2 else 1, 4)
            assert gt.labels.shape == (len(gt.bboxes), )


def test_mmdet_default_keep_empty_makes_the_wrapper_raise(tmp_path):
    """Why the config says keep_empty=False: with True, FilterAnnotations returns None for image
    0 on every retry of the same input, and MultiImageMixDataset gives up."""
    dataset = deim_train_dataset(tmp_path, keep_empty=True)
    assert dataset[2]['data_samples'].gt_instances.bboxes.shape == (1, 4)
    with pytest.raises(RuntimeError, match='always return None'):
        dataset[0]


def test_every_filter_of_the_wrapper_pipeline_keeps_an_image_left_without_boxes():
    """Each FilterAnnotations of the DEIM config's pipeline, given an image whose only box is
    0.5 px wide, returns the image with no box (image 0 above reaches only the second one)."""
    pipeline = Config.fromfile(DEIM_S).train_dataloader.dataset.pipeline
    filters = [TRANSFORMS.build(t) for t in pipeline if t.type == 'FilterAnnotations']
    assert len(filters) == 2
    for transform in filters:
        out = transform(dict(img=np.zeros((8, 8, 3), np.uint8), img_shape=(8, 8),
                             gt_bboxes=HorizontalBoxes(torch.tensor([[2., 2., 2.5, 6.]])),
                             gt_bboxes_labels=np.array([0]), gt_ignore_flags=np.array([False])))
        assert out is not None
        assert (len(out['gt_bboxes']), len(out['gt_bboxes_labels'])) == (0, 0)


@pytest.fixture(scope='module')
def deim_s():
    """DEIM-S (MAL loss, SiLU decoder) as its config builds it, without its batch augments: no
    multi-scale resize (inputs of 128 x 128: 336 encoder tokens for the 300 queries) and no MixUp
    (which would give the empty image the other image's boxes, as DEIM's does)."""
    cfg = Config.fromfile(DEIM_S).model
    cfg.data_preprocessor.batch_augments = None
    cfg.backbone.init_cfg = None
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('detr_plugin'):  # module fixtures precede conftest's
        return MODELS.build(cfg)


def batch(boxes_per_image, size=128):
    inputs = torch.rand(len(boxes_per_image), 3, size, size,
                        generator=torch.Generator().manual_seed(0)) * 255
    samples = []
    for boxes in boxes_per_image:
        s = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                        scale_factor=(1., 1.), batch_input_shape=(size, size),
                                        pad_shape=(size, size)))
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        labels = torch.zeros(len(boxes), dtype=torch.long)
        s.gt_instances = InstanceData(bboxes=boxes, labels=labels)
        samples.append(s)
    return dict(inputs=list(inputs), data_samples=samples)


@pytest.mark.parametrize('boxes', [[[[4, 4, 60, 70], [20, 30, 90, 100]], []], [[], []]])
def test_deim_training_step_with_images_without_boxes(deim_s, boxes):
    data = deim_s.data_preprocessor(batch(boxes), training=True)
    deim_s.train()
    deim_s.zero_grad()
    losses = deim_s(**data, mode='loss')
    total = sum(losses.values())
    assert 'loss_mal' in losses and torch.isfinite(total)
    total.backward()
    assert [n for n, p in deim_s.named_parameters() if p.requires_grad and p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for p in deim_s.parameters() if p.grad is not None)
    if not any(boxes):  # nothing to match: every box term is exactly 0, the class loss is not
        assert all(losses[n] == 0 for n in losses if n.endswith(('bbox', 'giou', 'fgl')))
        assert losses['loss_mal'] > 0
    else:
        assert losses['loss_giou'] > 0 and losses['dn_loss_giou'] > 0
