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


def one_hot_mal(logits, labels, ious, gamma, alpha):
    """DEIM's own formulation: target and weight from a one-hot of the labels."""
    one_hot = torch.nn.functional.one_hot(labels, logits.shape[-1] + 1)[:, :-1].to(logits.dtype)
    target = (one_hot * ious[:, None]).pow(gamma)
    negative_weight = logits.detach().sigmoid().pow(gamma) * (1 - one_hot)
    if alpha is not None:
        negative_weight = alpha * negative_weight
    return torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target, weight=negative_weight + one_hot, reduction='none')


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('alpha', [None, 0.25])
def test_bitwise_equal_to_the_one_hot_formula_values_and_gradients(dtype, alpha):
    g = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(200, 7, generator=g, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, 8, (200,), generator=g)  # 7 = no object
    ious = torch.rand(200, generator=g, dtype=dtype)
    ious[:10] = 0
    ious[10:20] = 1
    ours = matchability_aware_loss(logits, labels, ious, 1.5, alpha)
    reference = one_hot_mal(logits, labels, ious, 1.5, alpha)
    assert torch.equal(ours, reference)
    weights = torch.rand(ours.shape, generator=g, dtype=dtype)
    ours_grad, = torch.autograd.grad((ours * weights).sum(), logits)
    reference_grad, = torch.autograd.grad((reference * weights).sum(), logits)
    assert torch.equal(ours_grad, reference_grad)
