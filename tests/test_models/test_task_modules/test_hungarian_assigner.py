"""HungarianAssigner against brute force over all one-to-one assignments."""
import itertools
import math

import pytest
import torch
from mmengine.registry import DefaultScope

from detr_plugin.models.task_modules import (BBoxL1Cost, ClassificationCost, FocalLossCost,
                                             HungarianAssigner, IoUCost, Matches)
from detr_plugin.registry import TASK_UTILS
from detr_plugin.testing import HostSyncRecorder

L1_WEIGHT, GIOU_WEIGHT = 5., 2.


def _assigner():
    return HungarianAssigner([dict(type='ClassificationCost', weight=1.),
                              BBoxL1Cost(weight=L1_WEIGHT), IoUCost(weight=GIOU_WEIGHT)])


def _random_case(num_layers, num_queries, num_gts, num_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    bs = len(num_gts)

    def boxes(*shape):
        return torch.cat([torch.rand(*shape, 2, generator=g) * 0.8 + 0.1,
                          torch.rand(*shape, 2, generator=g) * 0.4 + 0.05], -1)

    logits = torch.randn(num_layers, bs, num_queries, num_classes + 1, generator=g)
    pred_boxes = boxes(num_layers, bs, num_queries)
    gt_labels = [torch.randint(num_classes, (n,), generator=g) for n in num_gts]
    gt_boxes = [boxes(n) for n in num_gts]
    return logits, pred_boxes, gt_labels, gt_boxes


def _reference_cost(logits_row, pred_box, label, gt_box):
    """Softmax class cost + weighted L1 + weighted -GIoU, scalar float64, written out."""
    probs = [math.exp(v) for v in logits_row]
    cls = -probs[label] / sum(probs)
    l1 = sum(abs(a - b) for a, b in zip(pred_box, gt_box))
    corners = [(b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2)
               for b in (pred_box, gt_box)]
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = corners
    inter = max(0., min(ax1, bx1) - max(ax0, bx0)) * max(0., min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    giou = inter / union - (hull - union) / hull
    return cls + L1_WEIGHT * l1 - GIOU_WEIGHT * giou


def _brute_force_min(cost):
    """Minimum total cost over all one-to-one assignments of min(Q, G) pairs; cost is Q x G."""
    num_queries, num_gts = len(cost), len(cost[0]) if cost else 0
    if num_gts <= num_queries:
        return min(sum(cost[q][j] for j, q in enumerate(perm))
                   for perm in itertools.permutations(range(num_queries), num_gts))
    return min(sum(cost[i][g] for i, g in enumerate(perm))
               for perm in itertools.permutations(range(num_gts), num_queries))


CASES = [  # (num_layers, num_queries, gts per image)
    (3, 6, [4, 0, 2]),
    (2, 4, [4, 4]),  # G == Q
    (1, 5, [1]),
    (2, 3, [0, 3, 1]),
    (2, 2, [4, 3]),  # Q < G: every query matched
    (4, 6, [3, 4]),
]


@pytest.mark.parametrize('num_layers,num_queries,num_gts', CASES)
def test_assignment_is_optimal_and_valid(num_layers, num_queries, num_gts):
    logits, pred_boxes, gt_labels, gt_boxes = _random_case(num_layers, num_queries, num_gts,
                                                           seed=len(CASES) * num_queries)
    matches = _assigner().assign(logits, pred_boxes, gt_labels, gt_boxes)
    assert len(matches) == num_layers and all(len(m) == len(num_gts) for m in matches)
    for layer, b in itertools.product(range(num_layers), range(len(num_gts))):
        query_idx, gt_idx = matches[layer][b]
        size = min(num_queries, num_gts[b])
        assert query_idx.dtype == gt_idx.dtype == torch.long
        assert query_idx.shape == gt_idx.shape == (size,)
        assert query_idx.tolist() == sorted(set(query_idx.tolist()))  # sorted, distinct
        assert len(set(gt_idx.tolist())) == size
        if size == 0:
            continue
        cost = [[_reference_cost(logits[layer, b, q].double().tolist(),
                                 pred_boxes[layer, b, q].double().tolist(),
                                 int(gt_labels[b][g]), gt_boxes[b][g].double().tolist())
                 for g in range(num_gts[b])] for q in range(num_queries)]
        chosen = sum(cost[q][g] for q, g in zip(query_idx.tolist(), gt_idx.tolist()))
        assert chosen == pytest.approx(_brute_force_min(cost), rel=1e-5, abs=1e-5)


def test_flat_indices_agree_with_pairs():
    num_layers, num_queries, num_gts = 3, 5, [2, 0, 5, 3]
    case = _random_case(num_layers, num_queries, num_gts, seed=7)
    result = _assigner().match(*case)
    assert isinstance(result, Matches)
    gt_starts = [0, 2, 2, 7]
    expected_pred, expected_gt = [], []
    for layer in range(num_layers):
        for b in range(len(num_gts)):
            query_idx, gt_idx = result.pairs[layer][b]
            expected_pred += [(layer * len(num_gts) + b) * num_queries + q for q in query_idx.tolist()]
            expected_gt += [gt_starts[b] + g for g in gt_idx.tolist()]
    assert result.pred_index.tolist() == expected_pred
    assert result.gt_index.tolist() == expected_gt
    assert result.pred_index.dtype == result.gt_index.dtype == torch.long
    # every layer has the same number of matches, in layer order
    layers = (result.pred_index // (len(num_gts) * num_queries)).tolist()
    assert layers == sorted(layers) and len(layers) == num_layers * sum(min(num_queries, n)
                                                                        for n in num_gts)


def test_all_images_empty():
    case = _random_case(2, 4, [0, 0, 0])
    result = _assigner().match(*case)
    assert all(q.numel() == 0 and g.numel() == 0 for row in result.pairs for q, g in row)
    assert result.pred_index.shape == result.gt_index.shape == (0,)


def _count_calls(monkeypatch, name, predicate=lambda *a, **k: True):
    calls = []
    original = getattr(torch.Tensor, name)

    def counting(self, *args, **kwargs):
        if predicate(*args, **kwargs):
            calls.append(name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, name, counting)
    return calls


def _moves_device(*args, **kwargs):
    return 'device' in kwargs or any(isinstance(a, (str, torch.device)) for a in args)


@pytest.mark.parametrize('num_gts,expected_d2h', [([3, 0, 2], 1), ([0, 0], 0)])
def test_one_copy_each_way_per_call(monkeypatch, num_gts, expected_d2h):
    case = _random_case(6, 5, num_gts)
    assigner = _assigner()
    d2h = _count_calls(monkeypatch, 'cpu')
    h2d = _count_calls(monkeypatch, 'to', _moves_device)
    scalar_syncs = [_count_calls(monkeypatch, name) for name in ('item', 'tolist', '__bool__')]
    assigner.match(*case)
    assert len(d2h) == expected_d2h
    assert len(h2d) == 1
    assert all(len(calls) == 0 for calls in scalar_syncs)


def test_non_finite_costs_do_not_raise():
    def cost_with_holes(pred_logits, pred_boxes, gt_labels, gt_boxes):
        # (L, bs, Q, G_total) with 3 gts per image; image 0's block (columns 0-2) becomes
        #   [[nan, inf, 1], [nan, 1, -inf], [1, nan, nan]]
        # and image 1's block (columns 3-5) is finite only on its anti-diagonal
        cost = torch.full((*pred_logits.shape[:3], gt_labels.shape[0]), float('nan'))
        cost[..., [2, 1, 0], [0, 1, 2]] = 1.
        cost[..., [2, 1, 0], [3, 4, 5]] = 1.
        cost[..., 0, 1] = float('inf')
        cost[..., 1, 2] = float('-inf')
        return cost

    case = _random_case(2, 3, [3, 3])
    matches = HungarianAssigner(cost_with_holes).assign(*case)
    for image0, image1 in matches:
        # NaN and +inf count as huge costs, -inf as a huge gain: taking (1, 2) forces one
        # huge cost elsewhere, which (0, 1) pays, and the gain cancels it
        assert list(zip(*[t.tolist() for t in image0])) == [(0, 1), (1, 2), (2, 0)]
        assert list(zip(*[t.tolist() for t in image1])) == [(0, 2), (1, 1), (2, 0)]


def test_degenerate_boxes_do_not_raise():
    logits, pred_boxes, gt_labels, gt_boxes = _random_case(2, 4, [3, 2])
    pred_boxes[..., 2:] = 0.  # zero width and height everywhere
    gt_boxes[0][:, 2:] = 0.
    gt_boxes[1][:] = 0.
    assigner = HungarianAssigner([ClassificationCost(), FocalLossCost(), BBoxL1Cost(), IoUCost()])
    matches = assigner.assign(logits, pred_boxes, gt_labels, gt_boxes)
    assert [[len(q) for q, _ in row] for row in matches] == [[3, 2], [3, 2]]


def test_costs_are_computed_without_grad():
    grad_enabled = []

    def recording_cost(pred_logits, pred_boxes, gt_labels, gt_boxes):
        grad_enabled.append(torch.is_grad_enabled())
        return BBoxL1Cost()(pred_logits, pred_boxes, gt_labels, gt_boxes)

    logits, pred_boxes, gt_labels, gt_boxes = _random_case(1, 3, [2])
    pred_boxes.requires_grad_(True)
    query_idx, gt_idx = HungarianAssigner([recording_cost]).assign(
        logits, pred_boxes, gt_labels, gt_boxes)[0][0]
    assert grad_enabled == [False] and not query_idx.requires_grad


def test_builds_from_registry():
    assigner = TASK_UTILS.build(dict(type='HungarianAssigner', match_costs=[
        dict(type='FocalLossCost', weight=2.), dict(type='IoUCost', iou_mode='iou')]))
    assert isinstance(assigner, HungarianAssigner)
    assert [type(c) for c in assigner.match_costs] == [FocalLossCost, IoUCost]


def test_builds_our_costs_under_mmdet_scope():
    # mmdet registers costs of the same names with another call signature
    with DefaultScope.overwrite_default_scope('mmdet'):
        assigner = HungarianAssigner([dict(type='ClassificationCost'), dict(type='BBoxL1Cost')])
    assert [type(c) for c in assigner.match_costs] == [ClassificationCost, BBoxL1Cost]


@pytest.mark.parametrize('change,message', [
    (lambda c: (c[0][0], c[1][0], c[2], c[3]), 'pred_logits must be'),
    (lambda c: (c[0], c[1][..., :3], c[2], c[3]), 'pred_boxes must be'),
    (lambda c: (c[0], c[1], c[2][:1], c[3]), 'one tensor per image'),
    (lambda c: (c[0], c[1], c[2], [c[3][0], c[3][1][:1]]), r'gt_boxes\[1\]'),
    (lambda c: (c[0], c[1], [c[2][0].float(), c[2][1]], c[3]), r'gt_labels\[0\]'),
])
def test_rejects_malformed_inputs(change, message):
    case = _random_case(2, 4, [2, 3])
    with pytest.raises(ValueError, match=message):
        _assigner().assign(*change(case))


def test_rejects_empty_cost_list():
    with pytest.raises(ValueError, match='match_costs'):
        HungarianAssigner([])


def test_match_sets_solves_each_set_as_match_does_with_one_wait():
    layers = _random_case(3, 5, [3, 0, 2], seed=1)
    encoder = _random_case(1, 5, [3, 0, 2], num_classes=1, seed=2)
    empty = _random_case(2, 5, [0, 0, 0], seed=3)
    assigner = _assigner()
    separately = [assigner.match(*case) for case in (layers, encoder, empty)]
    with HostSyncRecorder() as rec:
        together = assigner.match_sets([layers, encoder, empty])
    for one, other in zip(separately, together):
        assert torch.equal(one.pred_index, other.pred_index)
        assert torch.equal(one.gt_index, other.gt_index)
    assert rec.total == 1, rec.report()  # the costs of the sets, in one copy
