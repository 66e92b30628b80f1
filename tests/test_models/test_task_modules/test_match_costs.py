"""Match costs against formulas written out element by element in float64."""
import math

import pytest
import torch

from detr_plugin.models.task_modules import (BBoxL1Cost, ClassificationCost, FocalLossCost,
                                             IoUCost)
from detr_plugin.registry import TASK_UTILS


def _random_inputs(lead=(2, 3), num_queries=5, num_classes=4, num_gts=3, seed=0):
    """float64 inputs, so that the costs can be held to float64 references tightly."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*lead, num_queries, num_classes, generator=g) * 3
    pred_boxes = torch.cat([torch.rand(*lead, num_queries, 2, generator=g),
                            torch.rand(*lead, num_queries, 2, generator=g) * 0.5 + 0.01], -1)
    gt_labels = torch.randint(num_classes, (num_gts,), generator=g)
    gt_boxes = torch.cat([torch.rand(num_gts, 2, generator=g),
                          torch.rand(num_gts, 2, generator=g) * 0.5 + 0.01], -1)
    return logits.double(), pred_boxes.double(), gt_labels, gt_boxes.double()


def _each_pair(cost, logits, pred_boxes, gt_labels, gt_boxes, reference):
    """Compare cost[..., q, g] with reference(logits_row, pred_box, label, gt_box) everywhere."""
    lead_size = math.prod(logits.shape[:-2])
    flat_cost = cost.reshape(lead_size, cost.shape[-2], cost.shape[-1])
    flat_logits = logits.reshape(lead_size, *logits.shape[-2:]).double().tolist()
    flat_boxes = pred_boxes.reshape(lead_size, *pred_boxes.shape[-2:]).double().tolist()
    for i in range(lead_size):
        for q in range(cost.shape[-2]):
            for g in range(cost.shape[-1]):
                expected = reference(flat_logits[i][q], flat_boxes[i][q], int(gt_labels[g]),
                                     gt_boxes[g].double().tolist())
                assert flat_cost[i, q, g].item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def _giou_reference(box_a, box_b, generalized=True):
    """(G)IoU of two cxcywh boxes, scalar Python."""
    ax0, ay0, ax1, ay1 = (box_a[0] - box_a[2] / 2, box_a[1] - box_a[3] / 2,
                          box_a[0] + box_a[2] / 2, box_a[1] + box_a[3] / 2)
    bx0, by0, bx1, by1 = (box_b[0] - box_b[2] / 2, box_b[1] - box_b[3] / 2,
                          box_b[0] + box_b[2] / 2, box_b[1] + box_b[3] / 2)
    inter = max(0., min(ax1, bx1) - max(ax0, bx0)) * max(0., min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    iou = inter / union
    if not generalized:
        return iou
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return iou - (hull - union) / hull


def test_classification_cost_is_minus_softmax_of_gt_class():
    logits, boxes, labels, gt_boxes = _random_inputs()
    cost = ClassificationCost(weight=2.)(logits, None, labels, None)
    assert cost.shape == (2, 3, 5, 3)

    def reference(row, _box, label, _gt):
        return -2. * math.exp(row[label]) / sum(math.exp(v) for v in row)

    _each_pair(cost, logits, boxes, labels, gt_boxes, reference)


def test_classification_cost_hand_value():
    logits = torch.tensor([[0., math.log(3.)]])  # softmax = (1/4, 3/4)
    cost = ClassificationCost()(logits, None, torch.tensor([1, 0]), None)
    assert torch.allclose(cost, torch.tensor([[-0.75, -0.25]]))


def test_focal_loss_cost_matches_formula():
    logits, boxes, labels, gt_boxes = _random_inputs(seed=1)
    alpha, gamma, eps = 0.3, 1.5, 1e-8
    cost = FocalLossCost(weight=0.5, alpha=alpha, gamma=gamma, eps=eps)(logits, None, labels, None)
    assert cost.shape == (2, 3, 5, 3)

    def reference(row, _box, label, _gt):
        p = 1 / (1 + math.exp(-row[label]))
        pos = alpha * (1 - p) ** gamma * -math.log(p + eps)
        neg = (1 - alpha) * p ** gamma * -math.log(1 - p + eps)
        return 0.5 * (pos - neg)

    _each_pair(cost, logits, boxes, labels, gt_boxes, reference)


def test_focal_loss_cost_hand_value():
    # logit 0 -> p = 1/2: pos = 0.25 * 0.25 * log 2, neg = 0.75 * 0.25 * log 2
    cost = FocalLossCost(eps=0.)(torch.zeros(1, 2), None, torch.tensor([1]), None)
    assert cost.item() == pytest.approx((0.0625 - 0.1875) * math.log(2), rel=1e-6)


def test_bbox_l1_cost_matches_formula():
    logits, boxes, labels, gt_boxes = _random_inputs(seed=2)
    cost = BBoxL1Cost(weight=5.)(None, boxes, None, gt_boxes)
    assert cost.shape == (2, 3, 5, 3)

    def reference(_row, box, _label, gt):
        return 5. * sum(abs(a - b) for a, b in zip(box, gt))

    _each_pair(cost, logits, boxes, labels, gt_boxes, reference)


@pytest.mark.parametrize('mode', ['giou', 'iou'])
def test_iou_cost_matches_formula(mode):
    logits, boxes, labels, gt_boxes = _random_inputs(seed=3)
    cost = IoUCost(weight=2., iou_mode=mode)(None, boxes, None, gt_boxes)
    assert cost.shape == (2, 3, 5, 3)

    def reference(_row, box, _label, gt):
        return -2. * _giou_reference(box, gt, generalized=mode == 'giou')

    _each_pair(cost, logits, boxes, labels, gt_boxes, reference)


def test_iou_cost_hand_values():
    preds = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2]])
    gts = torch.tensor([[0.6, 0.5, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]])
    giou = -IoUCost()(None, preds, None, gts)
    # half-overlapping squares: IoU = 0.02 / 0.06, hull = union -> GIoU = 1/3;
    # disjoint: hull 0.64, union 0.08 -> GIoU = -(0.64 - 0.08) / 0.64 = -0.875
    assert giou[0, 0].item() == pytest.approx(1 / 3, rel=1e-5)
    assert giou[1, 1].item() == pytest.approx(-0.875, rel=1e-5)


def test_iou_cost_rejects_unknown_mode():
    with pytest.raises(ValueError, match='iou_mode'):
        IoUCost(iou_mode='diou')


@pytest.mark.parametrize('mode', ['giou', 'iou'])
def test_iou_cost_degenerate_boxes_are_finite(mode):
    preds = torch.tensor([[0.5, 0.5, 0., 0.], [0.5, 0.5, 0., 0.2], [0.3, 0.3, 0.2, 0.2],
                          [0., 0., 0., 0.]])
    gts = torch.tensor([[0.5, 0.5, 0., 0.], [0., 0., 0., 0.], [0.3, 0.3, 0.2, 0.]])
    cost = IoUCost(iou_mode=mode)(None, preds, None, gts)
    assert torch.isfinite(cost).all()


def test_costs_with_no_gts_are_empty():
    logits, boxes, _, _ = _random_inputs()
    labels, gt_boxes = torch.zeros(0, dtype=torch.long), torch.zeros(0, 4)
    for cost in (ClassificationCost(), FocalLossCost(), BBoxL1Cost(), IoUCost()):
        assert cost(logits, boxes, labels, gt_boxes).shape == (2, 3, 5, 0)


def test_box_costs_compute_half_precision_in_float32():
    _, boxes, _, gt_boxes = _random_inputs(seed=4)
    boxes, gt_boxes = boxes.half(), gt_boxes.half()
    for cost in (BBoxL1Cost(), IoUCost()):
        from_half = cost(None, boxes, None, gt_boxes)
        assert from_half.dtype == torch.float32
        assert torch.allclose(from_half, cost(None, boxes.float(), None, gt_boxes.float()))


def test_costs_build_from_registry_in_our_scope():
    cost = TASK_UTILS.build(dict(type='FocalLossCost', weight=2., alpha=0.5))
    assert isinstance(cost, FocalLossCost) and cost.weight == 2. and cost.alpha == 0.5
