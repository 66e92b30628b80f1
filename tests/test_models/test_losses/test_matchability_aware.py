"""DEIM's MAL against the formula evaluated by hand with Python floats."""
import math

import pytest
import torch

from detr_plugin.models.losses import MatchabilityAwareLoss, matchability_aware_loss

F64 = torch.float64
LOGITS = [[0.3, -1.2, 2.0], [-0.5, 0.8, -3.0], [1.5, 0.0, -0.7], [0.2, 0.1, -0.4]]
LABELS = [1, 3, 0, 2]          # 3 = no object
IOUS = [0.6, 0.9, 0.0, 1.0]    # row 2 matched with IoU 0 (target 0, weight 1)


def hand_mal(logits, labels, ious, gamma=1.5, alpha=1.0):
    """w * BCE(p, t): t = IoU ** gamma, w = 1 on the label; t = 0, w = alpha * p ** gamma off it."""
    out = []
    for row, label, iou in zip(logits, labels, ious):
        out_row = []
        for k, x in enumerate(row):
            p = 1 / (1 + math.exp(-x))
            if k == label:
                t, w = iou ** gamma, 1.0
            else:
                t, w = 0.0, alpha * p ** gamma
            out_row.append(-w * (t * math.log(p) + (1 - t) * math.log(1 - p)))
        out.append(out_row)
    return torch.tensor(out, dtype=F64)


def _args():
    return torch.tensor(LOGITS, dtype=F64), torch.tensor(LABELS), torch.tensor(IOUS, dtype=F64)


def test_elementwise_matches_hand_computation():
    out = matchability_aware_loss(*_args())
    torch.testing.assert_close(out, hand_mal(LOGITS, LABELS, IOUS), rtol=1e-12, atol=1e-14)
    # a matched class with IoU 0 is pushed down with full weight (VFL would give it weight 0)
    assert out[2, 0].item() == pytest.approx(math.log(1 + math.exp(1.5)))
    with_alpha = matchability_aware_loss(*_args(), gamma=2.0, alpha=0.25)
    torch.testing.assert_close(with_alpha, hand_mal(LOGITS, LABELS, IOUS, 2.0, 0.25),
                               rtol=1e-12, atol=1e-14)


def test_module_reductions_and_gradient():
    logits, labels, ious = _args()
    expected = hand_mal(LOGITS, LABELS, IOUS)
    loss = MatchabilityAwareLoss(gamma=1.5, loss_weight=2.0)
    assert loss(logits, labels, ious, avg_factor=4.0).item() == pytest.approx(
        2.0 * expected.sum().item() / 4.0)
    assert loss(logits, labels, ious, reduction_override='mean').item() == pytest.approx(
        2.0 * expected.mean().item())
    logits.requires_grad_(True)
    ious.requires_grad_(True)
    loss(logits, labels, ious).backward()
    assert logits.grad is not None and ious.grad is None
    with pytest.raises(ValueError, match='reduction'):
        MatchabilityAwareLoss(reduction='max')
    with pytest.raises(ValueError, match='matchability_aware'):
        loss(logits, labels[:2], ious)
