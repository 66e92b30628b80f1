"""ContiguousRandomFlip against mmdet's RandomFlip: same draws, boxes and pixels, contiguous."""
import copy

import numpy as np
import pytest
import torch
from mmdet.datasets.transforms import RandomFlip
from mmdet.structures.bbox import HorizontalBoxes

from detr_plugin.datasets.transforms import ContiguousRandomFlip


def sample(rng, dtype, channels):
    img = (rng.random((30, 50, channels)) * 255).astype(dtype)
    img = img[3:27, 5:41]  # a crop: a view with positive strides, as after RandomIoUCrop
    boxes = torch.tensor([[1.0, 2.0, 10.0, 20.0], [5.5, 0.0, 36.0, 7.25]])
    return dict(img=img, img_shape=img.shape[:2], gt_bboxes=HorizontalBoxes(boxes))


@pytest.mark.parametrize('dtype,channels', [(np.float32, 3), (np.uint8, 3), (np.uint8, 1)])
def test_same_output_as_mmdet_flip(dtype, channels):
    rng = np.random.default_rng(0)
    args = dict(prob=[0.3, 0.3, 0.2], direction=['horizontal', 'vertical', 'diagonal'])
    theirs, ours = RandomFlip(**args), ContiguousRandomFlip(**args)
    seen = set()
    for seed in range(30):
        results = sample(rng, dtype, channels)
        np.random.seed(seed)
        want = theirs.transform(copy.deepcopy(results))
        np.random.seed(seed)
        got = ours.transform(copy.deepcopy(results))
        assert got['flip_direction'] == want['flip_direction']
        seen.add(got['flip_direction'])
        assert got['img'].flags['C_CONTIGUOUS']
        assert got['img'].dtype == want['img'].dtype
        assert np.array_equal(got['img'], want['img'])
        assert torch.equal(got['gt_bboxes'].tensor, want['gt_bboxes'].tensor)
        assert got.keys() == want.keys()
        if 'homography_matrix' in want:
            assert np.array_equal(got['homography_matrix'], want['homography_matrix'])
    assert seen == {'horizontal', 'vertical', 'diagonal', None}


def test_horizontal_flip_by_hand():
    img = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    got = ContiguousRandomFlip(prob=1.0).transform(
        dict(img=img, img_shape=(2, 3), gt_bboxes=HorizontalBoxes(torch.zeros(0, 4))))
    assert np.array_equal(got['img'][:, 0], img[:, 2]) and np.array_equal(got['img'][:, 2],
                                                                          img[:, 0])
