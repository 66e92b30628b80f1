"""FGL against the formula written out with Python floats."""
import math

import pytest
import torch

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
