"""GIoULoss: what type='GIoULoss' builds in this package's scope; mmdet's values, bitwise."""
import pytest
import torch
from mmdet.models.losses import GIoULoss as MMDetGIoULoss
from mmdet.structures.bbox import bbox_overlaps
from mmengine.registry import DefaultScope

from detr_plugin.models.losses import GIoULoss
from detr_plugin.registry import MODELS
from detr_plugin.utils import register_all_modules

register_all_modules(init_default_scope=False)


def boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    b = torch.rand(n, 4, generator=g)
    b[:, 2:] += b[:, :2]
    return b


def test_configs_build_it():
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        assert type(MODELS.build(dict(type='GIoULoss', loss_weight=2.0))) is GIoULoss


@pytest.mark.parametrize('reduction, avg_factor', [('none', None), ('mean', None),
                                                   ('sum', None), ('mean', 7.0)])
def test_bitwise_equal_to_mmdet(reduction, avg_factor):
    ours_pred = boxes(30, 0).requires_grad_()
    theirs_pred = ours_pred.detach().clone().requires_grad_()
    target = boxes(30, 1)
    ours = GIoULoss(loss_weight=2.0)(ours_pred, target, avg_factor=avg_factor,
                                     reduction_override=reduction)
    theirs = MMDetGIoULoss(loss_weight=2.0)(theirs_pred, target, avg_factor=avg_factor,
                                            reduction_override=reduction)
    assert torch.equal(ours, theirs)
    ours.sum().backward()
    theirs.sum().backward()
    assert torch.equal(ours_pred.grad, theirs_pred.grad)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_losses_and_ious_bitwise_mmdets(dtype):
    """The unreduced losses (values, gradients) are mmdet's GIoU loss, the IoUs its IoU."""
    ours_pred = boxes(30, 0).to(dtype).requires_grad_()
    theirs_pred = ours_pred.detach().clone().requires_grad_()
    target = boxes(30, 1).to(dtype)
    losses, ious = GIoULoss(loss_weight=2.0).losses_and_ious(ours_pred, target)
    theirs = MMDetGIoULoss(loss_weight=2.0)(theirs_pred, target, reduction_override='none')
    assert torch.equal(losses, theirs) and not ious.requires_grad
    assert torch.equal(ious, bbox_overlaps(ours_pred.detach(), target, is_aligned=True))
    losses.sum().backward()
    theirs.sum().backward()
    assert torch.equal(ours_pred.grad, theirs_pred.grad)


def test_hand_computed_and_errors():
    pred, target = torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 0., 3., 2.]])
    assert torch.allclose(GIoULoss(reduction='none')(pred, target), torch.tensor([1 - 1 / 3]))
    with pytest.raises(ValueError, match='avg_factor'):
        GIoULoss()(pred, target, avg_factor=2.0, reduction_override='sum')
    with pytest.raises(ValueError, match='reduction'):
        GIoULoss(reduction='max')
