"""DFINEHead: one layer's distribution refinement and the LQE against the paper's equations written
out in float64, the pre-box, frozen up / reg_scale, the loss's names and matchings."""
import math

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData
from torch.utils._python_dispatch import TorchDispatchMode

from detr_plugin.models.dense_heads.dfine_head import DFINEHead, RefinementState
from detr_plugin.models.layers.denoising import ContrastiveDenoising
from detr_plugin.models.layers.predictions import (DenoisingOutputs, DetectionOutputs,
                                                   LayerPrediction)
from detr_plugin.registry import MODELS

REG_MAX, C, K = 8, 8, 3


def build_head(**kwargs):
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        head = MODELS.build(dict(type='DFINEHead', num_classes=K, embed_dims=C, num_pred_layers=2,
                                 reg_max=REG_MAX, reg_scale=4.0, **kwargs))
    torch.manual_seed(0)
    with torch.no_grad():  # every layer non-trivial (the last layers start at zero)
        for p in head.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
    return head.double()


def mlp_by_hand(mlp, x):
    """Linear layers with ReLU between them, as plain matrix products."""
    for i, linear in enumerate(mlp.layers):
        x = x @ linear.weight.T + linear.bias
        if i < len(mlp.layers) - 1:
            x = x.clamp(min=0)
    return x


def weights_by_hand(up, reg_scale, reg_max):
    """W(n) of the paper (Eq. 4): -2c, the left values, 0, the right values, 2c."""
    c = up * reg_scale
    step = (c + 1) ** (2 / (reg_max - 2))
    half = reg_max // 2
    left = [-(step ** i) + 1 for i in range(half - 1, 0, -1)]
    right = [step ** i - 1 for i in range(1, half)]
    return [-2 * c] + left + [0.0] + right + [2 * c]


def softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def test_one_layer_refinement_and_lqe_match_the_paper():
    head = build_head().train()
    torch.manual_seed(1)
    bs, Q = 1, 2
    query = torch.randn(bs, Q, C, dtype=torch.float64)
    previous_query = torch.randn(bs, Q, C, dtype=torch.float64)
    previous_corners = torch.randn(bs, Q, 4 * (REG_MAX + 1), dtype=torch.float64)
    initial = torch.tensor([[[0.4, 0.5, 0.2, 0.3], [0.6, 0.3, 0.5, 0.1]]], dtype=torch.float64)
    weights = head.predict_initial_box(query, initial).carry.weights
    state = RefinementState(previous_corners, previous_query, initial, weights)
    out = head.predict_layer(1, query, initial, LayerPrediction(None, initial, initial,
                                                                carry=state))

    w = weights_by_hand(0.5, 4.0, REG_MAX)
    torch.testing.assert_close(weights, torch.tensor(w, dtype=torch.float64))
    corners = mlp_by_hand(head.reg_branches[1], query + previous_query) + previous_corners
    torch.testing.assert_close(out.extras, corners)
    cls = query @ head.cls_branches[1].weight.T + head.cls_branches[1].bias
    for q in range(Q):
        cx, cy, bw, bh = initial[0, q].tolist()
        offsets, stats = [], []
        for edge in range(4):
            prob = softmax(corners[0, q, edge * (REG_MAX + 1):(edge + 1) * (REG_MAX + 1)].tolist())
            offsets.append(sum(p * v for p, v in zip(prob, w)))
            top = sorted(prob, reverse=True)[:4]
            stats += top + [sum(top) / 4]
        x0 = cx - (0.5 * 4 + offsets[0]) * bw / 4
        y0 = cy - (0.5 * 4 + offsets[1]) * bh / 4
        x1 = cx + (0.5 * 4 + offsets[2]) * bw / 4
        y1 = cy + (0.5 * 4 + offsets[3]) * bh / 4
        expected_box = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0],
                                    dtype=torch.float64)
        torch.testing.assert_close(out.boxes[0, q], expected_box)
        quality = mlp_by_hand(head.lqe_branches[1], torch.tensor(stats, dtype=torch.float64))
        torch.testing.assert_close(out.logits[0, q], cls[0, q] + quality)
    assert not out.next_reference.requires_grad and out.boxes.requires_grad
    # the next step gets this layer's corners with their gradient and the query detached
    assert out.carry.corners.requires_grad and not out.carry.query.requires_grad


def test_pre_box_is_the_initial_reference_and_uniform_edges_keep_it():
    head = build_head().train()
    for mlp in head.reg_branches:  # uniform distributions: expected offset 0 on every edge
        torch.nn.init.zeros_(mlp.layers[-1].weight)
        torch.nn.init.zeros_(mlp.layers[-1].bias)
    query = torch.randn(2, 3, C, dtype=torch.float64)
    reference = torch.rand(2, 3, 4, dtype=torch.float64) * 0.5 + 0.2
    pre = head.predict_initial_box(query, reference)
    delta = mlp_by_hand(head.pre_reg_branch, query)
    expected = torch.sigmoid(delta + torch.log(reference / (1 - reference)))
    torch.testing.assert_close(pre.boxes, expected)
    torch.testing.assert_close(pre.carry.initial_reference, expected)
    out = head.predict_layer(0, query, reference, pre)
    torch.testing.assert_close(out.boxes, expected)


def test_up_and_reg_scale_are_frozen_as_in_the_original():
    head = build_head()
    assert not head.up.requires_grad and not head.reg_scale.requires_grad
    assert {'up', 'reg_scale'} <= set(head.state_dict())
    assert head.up.item() == 0.5 and head.reg_scale.item() == 4.0


class AtenOps(TorchDispatchMode):
    """The names of the aten ops run inside it."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_bin_weights_are_computed_once_until_up_or_reg_scale_change():
    head = build_head()
    weights = head.bin_weights()
    torch.testing.assert_close(weights, torch.tensor(weights_by_hand(0.5, 4.0, REG_MAX),
                                                     dtype=torch.float64), rtol=0, atol=1e-15)
    with AtenOps() as ops:
        again = head.predict_initial_box(torch.randn(1, 2, C, dtype=torch.float64),
                                         torch.full((1, 2, 4), 0.5, dtype=torch.float64))
    assert again.carry.weights is weights and 'pow' not in ops.names
    # changed in place (load_state_dict copies), cast, made trainable: W of the new values
    head.load_state_dict({**head.state_dict(), 'reg_scale': torch.tensor([8.0])})
    expected = torch.tensor(weights_by_hand(0.5, 8.0, REG_MAX), dtype=torch.float64)
    torch.testing.assert_close(head.bin_weights(), expected, rtol=0, atol=1e-14)
    with torch.no_grad():
        head.up.fill_(0.25)
    expected = torch.tensor(weights_by_hand(0.25, 8.0, REG_MAX), dtype=torch.float64)
    torch.testing.assert_close(head.bin_weights(), expected, rtol=0, atol=1e-14)
    assert head.float().bin_weights().dtype == torch.float32
    head.up.requires_grad_()
    head.bin_weights()[0].backward()
    assert head.up.grad.item() == pytest.approx(-2 * 8.0)  # W(0) = -2 up reg_scale


def test_bin_weights_of_inference_mode_are_not_kept_for_training():
    head = build_head()
    with torch.inference_mode():
        assert head.bin_weights().is_inference()
    weights = head.bin_weights()
    assert not weights.is_inference()
    corners = torch.randn(1, 4 * (REG_MAX + 1), dtype=torch.float64, requires_grad=True)
    (corners.unflatten(-1, (4, REG_MAX + 1)).softmax(-1) @ weights).sum().backward()


def test_layer_without_previous_is_reported():
    head = build_head()
    with pytest.raises(ValueError, match='predict_initial_box'):
        head.predict_layer(0, torch.zeros(1, 1, C, dtype=torch.float64),
                           torch.full((1, 1, 4), 0.5, dtype=torch.float64), None)


def sample(boxes, labels, size=(100, 100)):
    s = DetDataSample(metainfo=dict(img_shape=size, ori_shape=size, scale_factor=(1., 1.),
                                    batch_input_shape=size))
    s.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                  labels=torch.tensor(labels, dtype=torch.long))
    return s


def outputs_of(head, gt, bs=2, Q=5, L=2, denoising=True):
    """Random decoder outputs with the shapes DFINEDecoder gives."""
    bins = 4 * (REG_MAX + 1)

    def rand_boxes(*shape):
        return (torch.rand(*shape, 4, dtype=torch.float64) * 0.4 + 0.3).requires_grad_()

    dn = pre_dn = None
    if denoising:
        groups = ContrastiveDenoising(K, C, num_denoising=4)(gt.labels, gt.boxes, num_queries=Q)
        D = groups.query.shape[1]
        dn = DenoisingOutputs(torch.randn(L, bs, D, K, dtype=torch.float64), rand_boxes(L, bs, D),
                              groups, torch.randn(L, bs, D, bins, dtype=torch.float64))
        pre_dn = DenoisingOutputs(torch.randn(1, bs, D, K, dtype=torch.float64),
                                  rand_boxes(1, bs, D), groups)
    pre = DetectionOutputs(torch.randn(1, bs, Q, K, dtype=torch.float64), rand_boxes(1, bs, Q),
                           denoising=pre_dn)
    return DetectionOutputs(
        logits=torch.randn(L, bs, Q, K, dtype=torch.float64, requires_grad=True),
        boxes=rand_boxes(L, bs, Q),
        extras=torch.randn(L, bs, Q, bins, dtype=torch.float64, requires_grad=True),
        enc_logits=torch.randn(bs, Q, K, dtype=torch.float64),
        enc_boxes=rand_boxes(bs, Q), denoising=dn, pre=pre)


def test_loss_names_are_the_originals_terms_in_our_scheme():
    head = build_head()
    samples = [sample([[10, 20, 50, 60], [30, 30, 90, 70]], [2, 0]), sample([], [])]
    gt = head.ground_truth(samples, torch.zeros(1, dtype=torch.float64))
    losses = head.loss(outputs_of(head, gt), gt)
    base = {'loss_vfl', 'loss_bbox', 'loss_giou'}
    local = base | {'loss_fgl'}
    expected = (local | {f'd0.{n}' for n in local | {'loss_ddf'}} | {f'pre_{n}' for n in base}
                | {f'enc_{n}' for n in base} | {f'dn_{n}' for n in local}
                | {f'd0.dn_{n}' for n in local | {'loss_ddf'}} | {f'pre_dn_{n}' for n in base})
    assert set(losses) == expected  # the last layer is the teacher: no loss_ddf
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses['d0.loss_ddf'] > 0 and losses['d0.dn_loss_ddf'] > 0


def test_box_terms_use_the_union_of_every_rows_matching():
    """A query matched in any row (layer, pre-box or encoder) gets box losses in every row: with
    one gt, the L1 loss of a row is the sum over the union's queries of that row's L1 distance."""
    head = build_head()
    samples = [sample([[10, 20, 50, 60]], [1])]
    gt = head.ground_truth(samples, torch.zeros(1, dtype=torch.float64))
    outputs = outputs_of(head, gt, bs=1, Q=4, denoising=False)
    all_logits = torch.cat([outputs.logits, outputs.pre.logits, outputs.enc_logits[None]])
    all_boxes = torch.cat([outputs.boxes, outputs.pre.boxes, outputs.enc_boxes[None]])
    matched = {int(q) for layer in head.match(all_logits, all_boxes, gt).pairs
               for q, _ in [layer[0]]}
    losses = head.loss(outputs, gt)
    target = gt.all_boxes[0]
    for name, boxes in (('loss_bbox', outputs.boxes[-1]), ('d0.loss_bbox', outputs.boxes[0]),
                        ('pre_loss_bbox', outputs.pre.boxes[0]),
                        ('enc_loss_bbox', outputs.enc_boxes)):
        l1 = sum((boxes[0, q] - target).abs().sum() for q in matched)
        torch.testing.assert_close(losses[name], 5.0 * l1 / len(matched))


def test_loss_without_any_box_is_finite_and_reaches_the_outputs():
    head = build_head()
    samples = [sample([], []), sample([], [])]
    gt = head.ground_truth(samples, torch.zeros(1, dtype=torch.float64))
    outputs = outputs_of(head, gt)
    losses = head.loss(outputs, gt)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert outputs.extras.grad is not None and outputs.boxes.grad is not None


def test_boxes_are_decoded_in_float32_under_autocast():
    head = build_head().float().train()
    query = torch.randn(2, 3, C)
    reference = torch.rand(2, 3, 4) * 0.5 + 0.2
    with torch.autocast('cpu', dtype=torch.bfloat16):
        pre = head.predict_initial_box(query, reference)
        out = head.predict_layer(0, query, reference, pre)
    assert out.boxes.dtype == torch.float32 and out.extras.dtype == torch.bfloat16
    state = pre.carry
    prob = out.extras.float().unflatten(-1, (4, REG_MAX + 1)).softmax(-1)
    distances = (prob * state.weights).sum(-1)  # the expectation, in float32
    size = state.initial_reference[..., 2:].repeat(1, 1, 2) / 4.0
    centre = state.initial_reference[..., :2].repeat(1, 1, 2)
    edges = centre + torch.tensor([-1., -1., 1., 1.]) * (2.0 + distances) * size
    expected = torch.cat([(edges[..., :2] + edges[..., 2:]) / 2, edges[..., 2:] - edges[..., :2]],
                         -1)
    torch.testing.assert_close(out.boxes, expected)


def test_matched_mask_marks_each_index_once_duplicates_included():
    pred_index = torch.randint(0, 3 * 7, (15,), generator=torch.Generator().manual_seed(0))
    assert pred_index.unique().numel() < pred_index.numel()  # duplicates
    expected = [[False] * 7 for _ in range(3)]
    for i in pred_index.tolist():
        expected[i // 7][i % 7] = True
    put = torch.zeros(3 * 7, dtype=torch.bool)
    put[pred_index] = True  # the index_put form
    mask = DFINEHead.matched_mask(pred_index, 3, 7)
    assert mask.tolist() == expected and torch.equal(mask, put.view(3, 7))
