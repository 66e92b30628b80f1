"""BatchMultiScaleResize against a nearest-neighbour resize written out as a loop, boxes and
shapes scaled by hand; the size weights of D-FINE's and DEIM's list."""
import collections
import random

import torch
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

from detr_plugin.models.data_preprocessors import BatchMultiScaleResize


def batch():
    inputs = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    samples = []
    for boxes in ([[0, 0, 6, 4], [1, 2, 3, 3]], []):
        sample = DetDataSample(metainfo=dict(img_shape=(4, 5), pad_shape=(4, 6),
                                             batch_input_shape=(4, 6)))
        sample.gt_instances = InstanceData(bboxes=torch.tensor(boxes).reshape(-1, 4).float(),
                                           labels=torch.zeros(len(boxes), dtype=torch.long))
        samples.append(sample)
    return inputs, samples


def test_nearest_resize_and_scaled_boxes():
    inputs, samples = batch()
    out, samples = BatchMultiScaleResize(sizes=[12])(inputs.clone(), samples)
    expected = torch.empty(2, 3, 12, 12)
    for y in range(12):
        for x in range(12):  # nearest: source index floor(target index * in / out)
            expected[:, :, y, x] = inputs[:, :, y * 4 // 12, x * 6 // 12]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # x by 12 / 6 = 2, y by 12 / 4 = 3
    assert samples[0].gt_instances.bboxes.tolist() == [[0, 0, 12, 12], [2, 6, 6, 9]]
    assert samples[1].gt_instances.bboxes.shape == (0, 4)
    assert samples[0].img_shape == (12, 10) and samples[0].pad_shape == (12, 12)
    assert samples[0].batch_input_shape == (12, 12)


def test_a_size_listed_k_times_is_drawn_k_times_as_often():
    random.seed(0)
    resize = BatchMultiScaleResize(sizes=[2, 3, 3, 3])
    counts = collections.Counter(
        resize(torch.zeros(1, 1, 4, 4), [])[0].shape[-1] for _ in range(2000))
    assert set(counts) == {2, 3} and 2.6 < counts[3] / counts[2] < 3.4
