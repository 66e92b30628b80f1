"""RandomIoUCrop against hand computations and brute-force checks of its acceptance rule."""
import numpy as np
import pytest
import torch
from mmdet.structures.bbox import HorizontalBoxes

from detr_plugin.datasets.transforms import RandomIoUCrop
from detr_plugin.datasets.transforms.random_iou_crop import window_iou


def results_with(boxes, labels, size=(100, 200)):
    h, w = size
    img = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    return dict(img=img, img_shape=(h, w),
                gt_bboxes=HorizontalBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)),
                gt_bboxes_labels=np.array(labels, dtype=np.int64),
                gt_ignore_flags=np.zeros(len(labels), dtype=bool))


def test_window_iou_by_hand():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]], dtype=np.float32)
    # window 0..10: box 0 equal; box 1 overlaps 5 x 5 = 25 of 100 + 100 - 25; box 2 none
    np.testing.assert_allclose(window_iou((0, 0, 10, 10), boxes), [1.0, 25 / 175, 0.0])


def test_crop_keeps_boxes_centred_inside_shifted_and_clipped():
    results = results_with([[10, 10, 50, 40],     # centre (30, 25): inside, clipped at the left
                            [60, 20, 90, 60],     # centre (75, 40): inside
                            [150, 50, 190, 90]],  # centre (170, 70): outside, dropped
                           [0, 1, 2])
    img = results['img'].copy()
    out = RandomIoUCrop().crop(results, (20, 10, 120, 70))
    assert out['img_shape'] == (60, 100)
    np.testing.assert_array_equal(out['img'], img[10:70, 20:120])
    np.testing.assert_allclose(out['gt_bboxes'].numpy(), [[0, 0, 30, 30], [40, 10, 70, 50]])
    assert out['gt_bboxes_labels'].tolist() == [0, 1]
    assert out['gt_ignore_flags'].tolist() == [False, False]


@pytest.mark.parametrize('min_iou', [0.1, 0.5, 0.7])
def test_accepted_windows_follow_the_rule(min_iou):
    """Every accepted window (drawn with one fixed minimum) has the drawn size and aspect limits,
    some box centre inside, and an inside box of IoU >= the minimum, by a naive loop."""
    boxes = np.array([[10, 10, 60, 50], [100, 20, 180, 90], [120, 60, 130, 70]], dtype=np.float32)
    t = RandomIoUCrop(sampler_options=(min_iou, ), trials=50)
    np.random.seed(0)
    accepted = 0
    for _ in range(200):
        window = t.sample_window(boxes, 200, 100)
        if window is None:
            continue
        accepted += 1
        left, top, right, bottom = window
        w, h = right - left, bottom - top
        assert 0.3 * 200 - 1 <= w <= 200 and 0.3 * 100 - 1 <= h <= 100
        assert 0.5 <= w / h <= 2.0 and left >= 0 and top >= 0 and right <= 200 and bottom <= 100
        best = 0.0
        for x1, y1, x2, y2 in boxes:
            if left < (x1 + x2) / 2 < right and top < (y1 + y2) / 2 < bottom:
                inter = (max(0, min(x2, right) - max(x1, left))
                         * max(0, min(y2, bottom) - max(y1, top)))
                best = max(best, inter / ((x2 - x1) * (y2 - y1) + w * h - inter))
        assert best >= min_iou - 1e-6
    assert accepted > 100


def test_rule_is_best_box_not_every_box():
    """A window tight on the big box leaves a small box far outside it: mmdet's MinIoURandomCrop
    would reject the window (that box's IoU is 0), this rule accepts it (best IoU 1)."""
    boxes = np.array([[0, 0, 100, 100], [150, 150, 160, 160]], dtype=np.float32)
    assert RandomIoUCrop().accepts((0, 0, 100, 100), boxes, 0.9)
    assert not RandomIoUCrop().accepts((0, 0, 100, 100), boxes[1:], 0.0)  # no centre inside


def test_no_crop_cases():
    np.random.seed(0)
    results = results_with([[10, 10, 50, 40]], [0])
    img = results['img']
    assert RandomIoUCrop(sampler_options=(1.0, ))(results)['img'] is img  # option 1.0: no crop
    assert RandomIoUCrop(prob=0.0)(results)['img'] is img
    empty = results_with([], [])
    assert RandomIoUCrop()(empty)['img'] is empty['img']  # nothing to centre a window on
    with pytest.raises(ValueError, match='min_scale'):
        RandomIoUCrop(min_scale=0.0)
