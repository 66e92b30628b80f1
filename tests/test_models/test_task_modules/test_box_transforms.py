"""cxcywh <-> xyxy against hand-computed boxes and, bitwise, against mmdet's conversions."""
import pytest
import torch
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_xyxy_to_cxcywh

from detr_plugin.models.task_modules import cxcywh_to_xyxy, xyxy_to_cxcywh


def test_hand_computed_box():
    cxcywh, xyxy = torch.tensor([2., 3., 4., 2.]), torch.tensor([0., 2., 4., 4.])
    assert torch.equal(cxcywh_to_xyxy(cxcywh), xyxy)
    assert torch.equal(xyxy_to_cxcywh(xyxy), cxcywh)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('ours, theirs', [(cxcywh_to_xyxy, bbox_cxcywh_to_xyxy),
                                          (xyxy_to_cxcywh, bbox_xyxy_to_cxcywh)])
def test_bitwise_equal_to_mmdet_values_and_gradients(dtype, ours, theirs):
    g = torch.Generator().manual_seed(0)
    boxes = torch.randn(3, 50, 4, generator=g, dtype=dtype)  # batch dims, negative sizes too
    boxes[0, :5] = 0  # degenerate
    ours_in, theirs_in = boxes.clone().requires_grad_(), boxes.clone().requires_grad_()
    ours_out, theirs_out = ours(ours_in), theirs(theirs_in)
    assert torch.equal(ours_out, theirs_out)
    weights = torch.randn(ours_out.shape, generator=g, dtype=dtype)
    (ours_out * weights).sum().backward()
    (theirs_out * weights).sum().backward()
    assert torch.equal(ours_in.grad, theirs_in.grad)
