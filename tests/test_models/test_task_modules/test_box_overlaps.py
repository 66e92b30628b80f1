"""box_overlaps against a hand-computed pair and, bitwise, against mmdet's bbox_overlaps."""
import pytest
import torch
from mmdet.structures.bbox import bbox_overlaps

from detr_plugin.models.task_modules import box_overlaps
from detr_plugin.models.task_modules.box_overlaps import ious_and_gious


def test_hand_computed_pair():
    a = torch.tensor([[0., 0., 2., 2.]])
    b = torch.tensor([[1., 0., 3., 2.], [3., 3., 4., 4.]])
    # overlap 2, union 6; disjoint: IoU 0, enclosing box 4 x 4 = 16, union 5
    assert torch.allclose(box_overlaps(a, b), torch.tensor([[1 / 3, 0.]]))
    assert torch.allclose(box_overlaps(a, b, mode='giou'),
                          torch.tensor([[1 / 3, 0. - (16 - 5) / 16]]))


def random_boxes(n, dtype, seed, grid=False):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.rand(n, 4, generator=g, dtype=dtype)
    boxes[:, 2:] += boxes[:, :2]
    if grid:  # corners on a coarse grid: many ties between the boxes' min / max
        boxes = torch.round(boxes * 8) / 8
    boxes[0, 2] = boxes[0, 0]  # zero width: the eps floor decides
    boxes[1] = boxes[2]  # a duplicate
    boxes[3, 2:] = boxes[3, :2] - 0.1  # inverted
    return boxes


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('mode', ['iou', 'giou'])
@pytest.mark.parametrize('is_aligned', [True, False])
@pytest.mark.parametrize('grid', [False, True])
def test_bitwise_equal_to_mmdet_values_and_gradients(dtype, mode, is_aligned, grid):
    boxes1, boxes2 = random_boxes(40, dtype, 0, grid), random_boxes(40, dtype, 1, grid)
    boxes2[:5] = boxes1[:5]  # identical pairs
    ours_in = [boxes1.clone().requires_grad_(), boxes2.clone().requires_grad_()]
    theirs_in = [boxes1.clone().requires_grad_(), boxes2.clone().requires_grad_()]
    ours = box_overlaps(*ours_in, mode=mode, is_aligned=is_aligned)
    theirs = bbox_overlaps(*theirs_in, mode=mode, is_aligned=is_aligned)
    assert torch.equal(ours, theirs)
    weights = torch.rand(ours.shape, dtype=dtype, generator=torch.Generator().manual_seed(2))
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    assert torch.equal(ours_in[0].grad, theirs_in[0].grad)
    assert torch.equal(ours_in[1].grad, theirs_in[1].grad)


def test_batch_dims_and_empty():
    boxes = torch.stack([random_boxes(5, torch.float32, s) for s in range(3)])  # (3, 5, 4)
    assert torch.equal(box_overlaps(boxes, boxes[:, :4]), bbox_overlaps(boxes, boxes[:, :4]))
    assert torch.equal(box_overlaps(boxes, boxes[0], mode='giou'),
                       bbox_overlaps(boxes, boxes[0].expand(3, 5, 4), mode='giou'))
    assert box_overlaps(boxes[0], boxes[0, :0]).shape == (5, 0)
    with pytest.raises(ValueError, match='mode'):
        box_overlaps(boxes, boxes, mode='iof')


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('is_aligned', [True, False])
def test_ious_and_gious_are_mmdets_iou_and_giou(dtype, is_aligned):
    """One pass gives both: each bitwise mmdet's own IoU and GIoU, values and GIoU gradients."""
    boxes1, boxes2 = random_boxes(40, dtype, 0, True), random_boxes(40, dtype, 1, True)
    ours_in = [boxes1.clone().requires_grad_(), boxes2.clone().requires_grad_()]
    theirs_in = [boxes1.clone().requires_grad_(), boxes2.clone().requires_grad_()]
    ious, gious = ious_and_gious(*ours_in, is_aligned=is_aligned)
    assert torch.equal(ious, bbox_overlaps(boxes1, boxes2, mode='iou', is_aligned=is_aligned))
    theirs = bbox_overlaps(*theirs_in, mode='giou', is_aligned=is_aligned)
    assert torch.equal(gious, theirs)
    gious.sum().backward()
    theirs.sum().backward()
    assert torch.equal(ours_in[0].grad, theirs_in[0].grad)
    assert torch.equal(ours_in[1].grad, theirs_in[1].grad)
