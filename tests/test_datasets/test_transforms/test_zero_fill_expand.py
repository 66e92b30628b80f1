"""ZeroFillExpand against mmdet's Expand: same draws, bitwise the same canvas and boxes."""
import copy

import numpy as np
import pytest
import torch
from mmdet.datasets.transforms import Expand
from mmdet.structures.bbox import HorizontalBoxes

from detr_plugin.datasets.transforms import ZeroFillExpand


def sample(rng, dtype):
    h, w = rng.integers(20, 60, size=2)
    img = (rng.random((h, w, 3)) * 300 - 20).astype(dtype)  # a distorted image leaves 0-255
    xy = rng.random((5, 2)) * [w / 2, h / 2]
    boxes = np.concatenate([xy, xy + rng.random((5, 2)) * [w / 2, h / 2]], axis=1)
    return dict(img=img, img_shape=(h, w), gt_bboxes=HorizontalBoxes(torch.tensor(boxes).float()),
                gt_bboxes_labels=np.arange(5))


@pytest.mark.parametrize('dtype', [np.float32, np.uint8])
def test_same_output_and_draws_as_mmdet_expand(dtype):
    rng = np.random.default_rng(0)
    args = dict(mean=[0, 0, 0], to_rgb=True, ratio_range=(1, 4), prob=0.5)
    theirs, ours = Expand(**args), ZeroFillExpand(**args)
    expanded = 0
    for seed in range(40):
        results = sample(rng, dtype)
        np.random.seed(seed)
        want = theirs.transform(copy.deepcopy(results))
        after_theirs = np.random.rand()
        np.random.seed(seed)
        got = ours.transform(copy.deepcopy(results))
        assert np.random.rand() == after_theirs  # the same number of draws
        assert got['img'].dtype == want['img'].dtype
        assert np.array_equal(got['img'], want['img'])
        assert got['img_shape'] == want['img_shape']
        assert torch.equal(got['gt_bboxes'].tensor, want['gt_bboxes'].tensor)
        expanded += got['img'].shape != results['img'].shape
    assert 10 < expanded < 30  # both branches ran


def test_nonzero_fill_is_mmdets():
    results = sample(np.random.default_rng(1), np.float32)
    np.random.seed(3)
    got = ZeroFillExpand(mean=[1, 2, 3], prob=1.0).transform(copy.deepcopy(results))
    canvas = got['img']
    assert canvas.shape[0] > results['img'].shape[0]
    # to_rgb reverses the mean; the corner is canvas unless the image was pasted there
    corners = [canvas[0, 0], canvas[0, -1], canvas[-1, 0], canvas[-1, -1]]
    assert any(np.array_equal(c, [3, 2, 1]) for c in corners)
