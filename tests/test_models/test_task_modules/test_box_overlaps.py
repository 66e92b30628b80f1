"""box_overlaps against a hand-computed pair and, bitwise, against mmdet's bbox_overlaps."""
import pytest
import torch
from mmdet.structures.bbox import bbox_overlaps

from detr_plugin.models.task_modules import box_overlaps


def test_hand_computed_pair():
    a = torch.tensor([[0., 0., 2., 2.]])
    b = torch.tensor([[1., 0., 3., 2.], [3., 3., 4., 4.]])
    # overlap 2, union 6; disjoint: IoU 0, enclosing box 4 x 4 = 16, union 5
    assert torch.allclose(box_overlaps(a, b), torch.tensor([[1 / 3, 0.]]))
    assert torch.allclose(box_overlaps(a, b, mode='giou'),
                          torch.tensor([[1 / 3, 0. - (16 - 5) / 16]]))


def random_boxes(n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.rand(n, 4, generator=g, dtype=dtype)
    boxes[:, 2:] += boxes[:, :2]
    boxes[0, 2] = boxes[0, 0]  # zero width: the eps floor decides
    return boxes


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('mode', ['iou', 'giou'])
@pytest.mark.parametrize('is_aligned', [True, False])
def test_bitwise_equal_to_mmdet_values_and_gradients(dtype, mode, is_aligned):
    ours_in, target = random_boxes(40, dtype, 0).requires_grad_(), random_boxes(40, dtype, 1)
    theirs_in = ours_in.detach().clone().requires_grad_()
    ours = box_overlaps(ours_in, target, mode=mode, is_aligned=is_aligned)
    theirs = bbox_overlaps(theirs_in, target, mode=mode, is_aligned=is_aligned)
    assert torch.equal(ours, theirs)
    weights = torch.rand(ours.shape, dtype=dtype, generator=torch.Generator().manual_seed(2))
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    assert torch.equal(ours_in.grad, theirs_in.grad)


def test_batch_dims_and_empty():
    boxes = torch.stack([random_boxes(5, torch.float32, s) for s in range(3)])  # (3, 5, 4)
    assert torch.equal(box_overlaps(boxes, boxes[:, :4]), bbox_overlaps(boxes, boxes[:, :4]))
    assert box_overlaps(boxes[0], boxes[0, :0]).shape == (5, 0)
    with pytest.raises(ValueError, match='mode'):
        box_overlaps(boxes, boxes, mode='iof')
