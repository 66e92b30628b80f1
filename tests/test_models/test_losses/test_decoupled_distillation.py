"""DDF against the formula written out with Python floats."""
import math

import pytest
import torch

from detr_plugin.models.losses import (DecoupledDistillationLoss, DistillationBalance,
                                       decoupled_distillation_loss, distillation_balance)
from detr_plugin.testing import HostSyncRecorder

F64 = torch.float64
BS, Q, BINS, K = 2, 3, 3, 2   # reg_max = 2


def _hand_edge_losses(corners, teacher, teacher_logits, matched, T=5.0):
    """{(b, q, e): w * T^2 * KL(softmax(teacher / T) || softmax(student / T))}."""
    out = {}
    for b in range(BS):
        for q in range(Q):
            if (b, q) in matched:
                w = matched[(b, q)]
            else:
                w = max(1 / (1 + math.exp(-x)) for x in teacher_logits[b][q])
            for e in range(4):
                s = [x / T for x in corners[b][q][e * BINS:(e + 1) * BINS]]
                t = [x / T for x in teacher[b][q][e * BINS:(e + 1) * BINS]]
                zs, zt = sum(math.exp(x) for x in s), sum(math.exp(x) for x in t)
                kl = sum(math.exp(ti) / zt * ((ti - math.log(zt)) - (si - math.log(zs)))
                         for si, ti in zip(s, t))
                out[(b, q, e)] = w * T * T * kl
    return out


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    corners = torch.randn(BS, Q, 4 * BINS, generator=g, dtype=F64) * 4
    teacher = torch.randn(BS, Q, 4 * BINS, generator=g, dtype=F64) * 4
    logits = torch.randn(BS, Q, K, generator=g, dtype=F64)
    return corners, teacher, logits


def _mix(edge_losses, matched, num_pos, num_neg):
    pos = [v for (b, q, e), v in edge_losses.items() if (b, q) in matched]
    neg = [v for (b, q, e), v in edge_losses.items() if (b, q) not in matched]
    mean_pos = sum(pos) / len(pos) if pos else 0.0
    mean_neg = sum(neg) / len(neg) if neg else 0.0
    return (mean_pos * num_pos + mean_neg * num_neg) / (num_pos + num_neg)


def test_ddf_matches_hand_computation():
    corners, teacher, logits = _inputs()
    corners.requires_grad_(True)
    matched = {(0, 2): 0.8, (1, 0): 0.3}       # (image, query): IoU
    index = torch.tensor([0 * Q + 2, 1 * Q + 0])
    ious = torch.tensor([0.8, 0.3], dtype=F64)
    edges = _hand_edge_losses(corners.tolist(), teacher.tolist(), logits.tolist(), matched)
    # 2 matched queries = 8 edges, 4 unmatched = 16 edges; batch scale 8 / 2 = 4
    num_pos, num_neg = math.sqrt(8 * 4), math.sqrt(16 * 4)
    expected = _mix(edges, matched, num_pos, num_neg)
    loss = decoupled_distillation_loss(corners, teacher, logits, index, ious)
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # balance is float32 as the original
    module = DecoupledDistillationLoss(temperature=5.0, loss_weight=1.5)
    assert module(corners, teacher, logits, index, ious).item() == pytest.approx(1.5 * expected,
                                                                                 rel=1e-6)
    loss.backward()
    assert corners.grad.abs().sum() > 0


def test_ddf_uses_the_given_balance_for_denoising_calls():
    corners, teacher, logits = _inputs(1)
    matched = {(1, 1): 0.5}
    index, ious = torch.tensor([1 * Q + 1]), torch.tensor([0.5], dtype=F64)
    balance = DistillationBalance(torch.tensor(3.0), torch.tensor(7.0))
    edges = _hand_edge_losses(corners.tolist(), teacher.tolist(), logits.tolist(), matched)
    loss = decoupled_distillation_loss(corners, teacher, logits, index, ious, balance=balance)
    assert loss.item() == pytest.approx(_mix(edges, matched, 3.0, 7.0), rel=1e-12)


def test_ddf_without_matches_is_the_unmatched_mean():
    corners, teacher, logits = _inputs(2)
    edges = _hand_edge_losses(corners.tolist(), teacher.tolist(), logits.tolist(), {})
    loss = decoupled_distillation_loss(corners, teacher, logits, torch.zeros(0, dtype=torch.long),
                                       torch.zeros(0, dtype=F64))
    assert loss.item() == pytest.approx(sum(edges.values()) / len(edges), rel=1e-12)


def test_ddf_is_exactly_zero_for_the_teacher_itself():
    corners, _, logits = _inputs(3)
    corners.requires_grad_(True)
    loss = decoupled_distillation_loss(corners, corners.detach().clone(), logits,
                                       torch.tensor([0]), torch.tensor([0.9], dtype=F64))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert (corners.grad == 0).all()


def test_distillation_balance_formula():
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[0, 1] = mask[2, 3] = mask[3, 0] = True
    balance = distillation_balance(mask)
    # 3 matched queries * 4 edges, 17 * 4 unmatched edges, batch scale 8 / 4 = 2
    assert balance.matched.item() == pytest.approx(math.sqrt(12 * 2))
    assert balance.unmatched.item() == pytest.approx(math.sqrt(68 * 2))


@pytest.mark.parametrize('num_matched', [0, 2, BS * Q])
def test_ddf_means_are_the_boolean_mask_means_bitwise(num_matched):
    """The matched / unmatched means taken by index (no host wait) equal, values and gradients
    bit for bit, the boolean-mask selection written out here."""
    corners, teacher, logits = (t.float() for t in _inputs(1))
    index = torch.randperm(BS * Q, generator=torch.Generator().manual_seed(2))[:num_matched]
    ious = torch.rand(num_matched, generator=torch.Generator().manual_seed(3))
    ours_in, ref_in = corners.clone().requires_grad_(), corners.clone().requires_grad_()
    with HostSyncRecorder() as rec:
        ours = decoupled_distillation_loss(ours_in, teacher, logits, index, ious)
    assert rec.total == 0, rec.report()  # the teacher-identity check too stays on the device

    weights = logits.sigmoid().max(-1).values.reshape(-1)
    weights[index] = ious
    matched = torch.zeros(BS * Q, dtype=torch.bool)
    matched[index] = True
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(ref_in.reshape(-1, BINS) / 5.0, 1),
        torch.softmax(teacher.reshape(-1, BINS) / 5.0, 1), reduction='none').sum(-1)
    loss = weights.repeat_interleave(4) * 25.0 * kl
    edge = matched.repeat_interleave(4)
    means = [loss[edge].mean() if edge.any() else 0, loss[~edge].mean() if (~edge).any() else 0]
    balance = distillation_balance(matched.reshape(BS, Q))
    reference = ((means[0] * balance.matched + means[1] * balance.unmatched)
                 / (balance.matched + balance.unmatched))
    assert torch.equal(ours, reference)
    ours.backward()
    reference.backward()
    assert torch.equal(ours_in.grad, ref_in.grad)


def _previous_ddf(corners, teacher_corners, teacher_logits, matched_index, matched_ious, balance,
                  temperature=5.0):
    """The earlier one-layer implementation (host-side teacher check, per-edge index means),
    kept as the reference of the layer-batched one."""
    if torch.equal(corners, teacher_corners):
        return corners.sum() * 0
    bs, num_queries, width = corners.shape
    weights = teacher_logits.detach().sigmoid().max(-1).values.reshape(-1)
    weights[matched_index] = matched_ious.detach().to(weights.dtype)
    matched = torch.zeros(bs * num_queries, dtype=torch.bool)
    matched[matched_index] = True
    student = torch.log_softmax(corners.reshape(-1, width // 4) / temperature, dim=1)
    teacher = torch.softmax(teacher_corners.detach().reshape(-1, width // 4) / temperature, dim=1)
    kl = torch.nn.functional.kl_div(student, teacher, reduction='none').sum(-1)
    loss = weights.repeat_interleave(4) * temperature ** 2 * kl
    order = torch.sort(matched.to(torch.uint8), stable=True).indices
    split = bs * num_queries - matched_index.numel()

    def edge_mean(queries):
        return loss[(queries[:, None] * 4 + torch.arange(4)).flatten()].mean()

    matched_mean = edge_mean(order[split:]) if matched_index.numel() else 0
    unmatched_mean = edge_mean(order[:split]) if split else 0
    return ((matched_mean * balance.matched + unmatched_mean * balance.unmatched)
            / (balance.matched + balance.unmatched))


@pytest.mark.parametrize('dtype', [torch.float32, F64])
@pytest.mark.parametrize('num_matched', [0, 37, 2 * 60])
def test_ddf_over_layers_bitwise_the_per_layer_loss(dtype, num_matched):
    """(L - 1) students at once, one of them equal to the teacher: each layer's value and the
    students' gradient are those of the per-layer loss, bit for bit."""
    g = torch.Generator().manual_seed(num_matched)
    bs, num_queries, bins, num_layers = 2, 60, 33, 4
    corners = (torch.randn(num_layers, bs, num_queries, 4 * bins, generator=g) * 3).to(dtype)
    corners[1] = corners[-1]  # a student that is the teacher (as every layer at initialisation)
    logits = torch.randn(bs, num_queries, 7, generator=g).to(dtype)
    index = torch.randperm(bs * num_queries, generator=g)[:num_matched]
    ious = torch.rand(num_layers, num_matched, generator=g).to(dtype)
    mask = torch.zeros(bs * num_queries, dtype=torch.bool)
    mask[index] = True
    balance = distillation_balance(mask.reshape(bs, num_queries))
    ours_in, ref_in = corners.clone().requires_grad_(), corners.clone().requires_grad_()
    module = DecoupledDistillationLoss(temperature=5.0, loss_weight=1.5)
    ours = module(ours_in[:-1], ours_in[-1], logits, index, ious[:-1], balance)
    expected = torch.stack([1.5 * _previous_ddf(c, ref_in[-1], logits, index, i, balance)
                            for c, i in zip(ref_in[:-1], ious)])
    assert ours.shape == (num_layers - 1,) and ours[1] == 0 and (ours[[0, 2]] > 0).all()
    assert torch.equal(ours, expected)
    upstream = torch.rand(num_layers - 1, generator=g).to(dtype)
    ours.backward(upstream)
    expected.backward(upstream)
    assert torch.equal(ours_in.grad, ref_in.grad)
    # without a given balance (the non-denoising call) the same weights are computed
    assert torch.equal(module(corners[:-1], corners[-1], logits, index, ious[:-1]), expected)
