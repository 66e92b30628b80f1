"""RT-DETR's varifocal loss against the formula evaluated by hand with Python floats."""
import math

import pytest
import torch

from detr_plugin.models.losses import RTDETRVarifocalLoss


def hand_vfl(logits, labels, ious, alpha=0.75, gamma=2.0):
    """Elementwise, written out: w * BCE(p, t) with t = IoU on the label, 0 elsewhere."""
    out = []
    for row, label, iou in zip(logits, labels, ious):
        out_row = []
        for k, x in enumerate(row):
            p = 1 / (1 + math.exp(-x))
            positive = k == label
            t = iou if positive else 0.0
            w = (0.0 if positive else alpha * p ** gamma) + t
            out_row.append(-w * (t * math.log(p) + (1 - t) * math.log(1 - p)))
        out.append(out_row)
    return torch.tensor(out, dtype=torch.float64)


LOGITS = [[0.3, -1.2, 2.0], [-0.5, 0.8, -3.0], [1.5, 0.0, -0.7]]
LABELS = [1, 3, 0]      # 3 = no object
IOUS = [0.6, 0.9, 0.0]  # the third is matched with IoU 0: weight 0 on its class


def test_elementwise_matches_hand_computation():
    loss = RTDETRVarifocalLoss(alpha=0.75, gamma=2.0, reduction='none')
    out = loss(torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(LABELS),
               torch.tensor(IOUS, dtype=torch.float64))
    expected = hand_vfl(LOGITS, LABELS, IOUS)
    torch.testing.assert_close(out, expected)
    assert out[2, 0] == 0  # matched with IoU 0: neither pushed up nor down


def test_reductions_weight_and_avg_factor():
    args = (torch.tensor(LOGITS), torch.tensor(LABELS), torch.tensor(IOUS))
    expected = hand_vfl(LOGITS, LABELS, IOUS).sum().item()
    loss = RTDETRVarifocalLoss(loss_weight=2.0)
    assert loss(*args).item() == pytest.approx(2 * expected, rel=1e-5)
    assert loss(*args, avg_factor=4.0).item() == pytest.approx(expected / 2, rel=1e-5)
    assert loss(*args, reduction_override='mean').item() == pytest.approx(2 * expected / 9,
                                                                         rel=1e-5)


def test_gradient_does_not_flow_into_weights_or_targets():
    logits = torch.tensor(LOGITS, requires_grad=True)
    ious = torch.tensor(IOUS, requires_grad=True)
    RTDETRVarifocalLoss()(logits, torch.tensor(LABELS), ious).backward()
    assert ious.grad is None
    # d/dx of w * BCE with w held fixed is w * (p - t)
    x, iou = LOGITS[0][0], IOUS[0]
    p = 1 / (1 + math.exp(-x))
    assert logits.grad[0, 0].item() == pytest.approx(0.75 * p ** 2 * p, rel=1e-5)
    p = 1 / (1 + math.exp(-LOGITS[0][1]))
    assert logits.grad[0, 1].item() == pytest.approx(iou * (p - iou), rel=1e-5)


def test_bad_inputs():
    loss = RTDETRVarifocalLoss()
    with pytest.raises(ValueError, match='reduction'):
        RTDETRVarifocalLoss(reduction='max')
    with pytest.raises(ValueError, match='expected logits'):
        loss(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), torch.zeros(3))


def one_hot_vfl(logits, labels, ious, alpha=0.75, gamma=2.0):
    """RT-DETR's own formulation: target and weight from a one-hot of the labels."""
    one_hot = torch.nn.functional.one_hot(labels, logits.shape[-1] + 1)[:, :-1].to(logits.dtype)
    target = one_hot * ious[:, None]
    weight = alpha * logits.detach().sigmoid().pow(gamma) * (1 - one_hot) + target
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, weight=weight,
                                                                reduction='none')


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_bitwise_equal_to_the_one_hot_formula_values_and_gradients(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(200, 7, generator=g, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, 8, (200,), generator=g)  # 7 = no object
    ious = torch.rand(200, generator=g, dtype=dtype)
    ious[:10] = 0
    ious[10:20] = 1
    ours = RTDETRVarifocalLoss(reduction='none')(logits, labels, ious)
    reference = one_hot_vfl(logits, labels, ious)
    assert torch.equal(ours, reference)
    weights = torch.rand(ours.shape, generator=g, dtype=dtype)
    ours_grad, = torch.autograd.grad((ours * weights).sum(), logits)
    reference_grad, = torch.autograd.grad((reference * weights).sum(), logits)
    assert torch.equal(ours_grad, reference_grad)
