"""FGL against the formula written out with Python floats."""
import math

import pytest
import torch
import torch.nn.functional as F

from detr_plugin.models.layers.box_distribution import BinTargets
from detr_plugin.models.losses import FineGrainedLocalizationLoss, fine_grained_localization_loss

F64 = torch.float64


def _ce(logits, k):
    return -(logits[k] - math.log(sum(math.exp(x) for x in logits)))


def test_fgl_matches_hand_computation():
    torch.manual_seed(0)
    reg_max = 4
    corners = torch.randn(2, 4 * (reg_max + 1), dtype=F64, requires_grad=True)
    # box 0: on bin 2; between 1 and 2; beyond the low end (bin 0); beyond the high end (3.9)
    # box 1: arbitrary splits
    index = [2.0, 1.0, 0.0, 3.9, 0.0, 3.0, 2.0, 3.9]
    right = [0.0, 0.3, 0.0, 1.0, 0.8, 0.5, 0.1, 0.6]
    bins = BinTargets(torch.tensor(index, dtype=F64), torch.tensor(right, dtype=F64),
                      1 - torch.tensor(right, dtype=F64))
    ious = torch.tensor([0.7, 0.2], dtype=F64)
    rows = corners.detach().reshape(8, reg_max + 1).tolist()
    expected = 0.0
    for e in range(8):
        left = int(index[e])  # floor: 3.9 -> bins 3 and 4
        expected += ious[e // 4].item() * ((1 - right[e]) * _ce(rows[e], left)
                                           + right[e] * _ce(rows[e], left + 1))
    loss = fine_grained_localization_loss(corners, bins, ious, avg_factor=3.0)
    assert loss.item() == pytest.approx(expected / 3.0, rel=1e-12)
    assert fine_grained_localization_loss(corners, bins, ious).item() == pytest.approx(expected)
    module = FineGrainedLocalizationLoss(loss_weight=0.15)
    assert module(corners, bins, ious, 3.0).item() == pytest.approx(0.15 * expected / 3.0)
    # the IoU weights are constants: gradient reaches the logits only
    ious.requires_grad_(True)
    fine_grained_localization_loss(corners, bins, ious).backward()
    assert corners.grad is not None and ious.grad is None


def test_fgl_zero_matches_and_shape_check():
    empty = BinTargets(torch.zeros(0), torch.zeros(0), torch.zeros(0))
    loss = fine_grained_localization_loss(torch.zeros(0, 20, requires_grad=True), empty,
                                          torch.zeros(0), avg_factor=1.0)
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match='fine_grained_localization'):
        fine_grained_localization_loss(torch.zeros(2, 20), empty, torch.zeros(2))


def _previous_fgl(corners, bins, ious, avg_factor):
    """The earlier one-layer implementation (two F.cross_entropy calls, the original's form),
    kept as the reference of the layer-batched one."""
    logits = corners.reshape(4 * corners.shape[0], corners.shape[-1] // 4)
    left = bins.index.long()
    loss = (F.cross_entropy(logits, left, reduction='none') * bins.weight_left
            + F.cross_entropy(logits, left + 1, reduction='none') * bins.weight_right)
    return (loss * ious.detach().to(loss.dtype).repeat_interleave(4)).sum() / avg_factor


@pytest.mark.parametrize('dtype', [torch.float32, F64])
def test_fgl_over_layers_bitwise_the_per_layer_loss(dtype):
    """(L, M) layers at once: each layer's value and the logits' gradient are those of the
    per-layer loss, bit for bit."""
    g = torch.Generator().manual_seed(0)
    num_layers, num_boxes, reg_max = 3, 70, 32
    corners = (torch.randn(num_layers, num_boxes, 4 * (reg_max + 1), generator=g) * 3).to(dtype)
    index = (torch.rand(4 * num_boxes, generator=g) * (reg_max - 0.1)).to(dtype)
    index[:8] = torch.tensor([0.0, reg_max - 0.1] * 4, dtype=dtype)  # both ends
    right = torch.rand(4 * num_boxes, generator=g).to(dtype)
    bins = BinTargets(index, right, 1 - right)
    ious = torch.rand(num_layers, num_boxes, generator=g).to(dtype)
    avg = torch.tensor(17.0, dtype=dtype)
    ours_in, ref_in = corners.clone().requires_grad_(), corners.clone().requires_grad_()
    ours = FineGrainedLocalizationLoss(0.15)(ours_in, bins, ious, avg)
    expected = torch.stack([0.15 * _previous_fgl(c, bins, i, avg) for c, i in zip(ref_in, ious)])
    assert ours.shape == (num_layers,) and torch.equal(ours, expected)
    upstream = torch.rand(num_layers, generator=g).to(dtype)
    ours.backward(upstream)
    expected.backward(upstream)
    assert torch.equal(ours_in.grad, ref_in.grad)
