"""RTDETRHead: varifocal loss per layer by hand, denoising matches, top-k over queries x classes."""
import math

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

from detr_plugin.models.layers.denoising import ContrastiveDenoising
from detr_plugin.models.layers.predictions import DenoisingOutputs, DetectionOutputs
from detr_plugin.models.task_modules import Matches
from detr_plugin.registry import MODELS


@pytest.fixture(scope='module')
def head():
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        return MODELS.build(dict(type='RTDETRHead', num_classes=3, embed_dims=8,
                                 num_pred_layers=2, test_cfg=dict(max_per_img=4)))


def sample(boxes, labels, size=(100, 100)):
    s = DetDataSample(metainfo=dict(img_shape=size, ori_shape=size, scale_factor=(1., 1.)))
    s.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                  labels=torch.tensor(labels, dtype=torch.long))
    return s


def iou_by_hand(a, b):
    """cxcywh boxes (Python floats) -> IoU."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_varifocal_loss_per_layer_by_hand(head):
    torch.manual_seed(0)
    L, bs, Q, K = 2, 2, 3, 3
    logits = torch.randn(L, bs, Q, K, dtype=torch.float64)
    boxes = torch.rand(L, bs, Q, 4, dtype=torch.float64) * 0.5 + 0.2
    samples = [sample([[10, 20, 50, 60]], [2]), sample([[0, 0, 40, 30], [50, 50, 90, 80]], [0, 1])]
    gt = head.ground_truth(samples, boxes)
    # layer 0: image 0 query 1 <-> gt 0; image 1 queries 0, 2 <-> gts 1, 0. layer 1: nothing
    matches = Matches(pairs=[], pred_index=torch.tensor([1, Q + 0, Q + 2]),
                      gt_index=torch.tensor([0, 2, 1]))
    num_boxes = torch.tensor(3.0, dtype=torch.float64)
    loss = head.loss_cls_per_layer(logits, gt, matches, head.matched_ious(boxes, gt, matches),
                                   num_boxes)
    # the shared path: class targets from the GIoU loss's IoU term of the same matched pairs
    shared = head.losses_per_layer(logits, boxes, gt, matches, num_boxes)['loss_cls']
    target = {(0, 0, 1): (2, gt.all_boxes[0]), (0, 1, 0): (1, gt.all_boxes[2]),
              (0, 1, 2): (0, gt.all_boxes[1])}
    expected = [0.0, 0.0]
    for l, b, q in ((l, b, q) for l in range(L) for b in range(bs) for q in range(Q)):
        label, gt_box = target.get((l, b, q), (K, None))
        iou = iou_by_hand(boxes[l, b, q].tolist(), gt_box.tolist()) if gt_box is not None else 0
        for k in range(K):
            p = 1 / (1 + math.exp(-logits[l, b, q, k].item()))
            t = iou if k == label else 0.0
            w = t if k == label else 0.75 * p ** 2
            expected[l] += -w * (t * math.log(p) + (1 - t) * math.log(1 - p))
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64) / 3.0)
    torch.testing.assert_close(shared, torch.tensor(expected, dtype=torch.float64) / 3.0)


def test_loss_iou_must_give_its_iou_term():
    with DefaultScope.overwrite_default_scope('detr_plugin'), \
            pytest.raises(ValueError, match='loss_iou must be a GIoULoss'):
        MODELS.build(dict(type='RTDETRHead', num_classes=3, embed_dims=8, num_pred_layers=2,
                          loss_iou=dict(type='L1Loss')))


def test_loss_names_and_denoising_terms(head):
    torch.manual_seed(1)
    L, bs, Q, K = 2, 2, 4, 3
    samples = [sample([[10, 20, 50, 60]], [2]), sample([], [])]
    gt = head.ground_truth(samples, torch.zeros(1))
    dn = ContrastiveDenoising(K, 8, num_denoising=4)(gt.labels, gt.boxes, num_queries=Q)
    D = dn.query.shape[1]
    outputs = DetectionOutputs(
        logits=torch.randn(L, bs, Q, K, requires_grad=True),
        boxes=torch.rand(L, bs, Q, 4).mul(0.5).add(0.2).requires_grad_(),
        enc_logits=torch.randn(bs, Q, K), enc_boxes=torch.rand(bs, Q, 4) * 0.5 + 0.2,
        denoising=DenoisingOutputs(torch.randn(L, bs, D, K), torch.rand(L, bs, D, 4) * 0.5 + 0.2,
                                   dn))
    losses = head.loss(outputs, gt)
    names = {'loss_cls', 'loss_bbox', 'loss_iou'}
    expected = names | {f'd0.{n}' for n in names} | {f'enc_{n}' for n in names} | \
        {f'dn_{n}' for n in names} | {f'd0.dn_{n}' for n in names}
    assert set(losses) == expected
    # denoising: each positive query reconstructs its own gt on every layer, by construction
    matches = head.denoising_matches(dn, L)
    assert dn.num_groups == 4 and D == 8  # 4 groups of [positive, negative] for one gt
    positives = [0, 2, 4, 6]
    assert matches.pred_index.tolist() == positives + [bs * D + p for p in positives]
    assert matches.gt_index.tolist() == [0] * 8
    dn_l1 = (outputs.denoising.boxes[1, 0, positives] - gt.all_boxes[0]).abs().sum() * 5
    torch.testing.assert_close(losses['dn_loss_bbox'], dn_l1 / (1 * dn.num_groups))


def test_top_k_over_queries_and_classes(head):
    logits = torch.tensor([[[0.1, 2.0, -1.0], [1.5, 1.9, 3.0], [-2.0, 0.0, 0.2]]])  # (1, 3, 3)
    scores, labels, queries = head.scores_and_labels(logits)
    flat = sorted(((torch.sigmoid(logits[0, q, k]).item(), q, k) for q in range(3)
                   for k in range(3)), reverse=True)[:4]
    torch.testing.assert_close(scores[0], torch.tensor([s for s, _, _ in flat]))
    assert queries[0].tolist() == [q for _, q, _ in flat]
    assert labels[0].tolist() == [k for _, _, k in flat]
    assert queries[0].tolist().count(1) == 3  # one query, three detections of its classes


def test_heads_start_at_prior_and_reference(head):
    assert torch.allclose(head.cls_branches[0].bias.sigmoid(), torch.tensor(0.01))
    assert torch.allclose(head.enc_cls_branch.bias.sigmoid(), torch.tensor(0.01))
    assert not head.reg_branches[1].layers[-1].weight.any()
    assert not head.enc_reg_branch.layers[-1].bias.any()
    with pytest.raises(NotImplementedError):
        head(torch.zeros(1))


def test_float16_logits_are_matched_and_scored_in_float32(head):
    """Under float16 autocast the class logits come in float16. Two queries score the gt's class
    with logit 10; query 1's box is the gt, query 0's is elsewhere, so the matching must take
    query 1 (box losses 0). In float16, sigmoid(10) rounds to 1 and the focal cost's log(1 - p)
    to -inf: every confident query got the same cost whatever its box, and query 0 was taken."""
    logits = torch.full((2, 1, 2, 3), -5.0)
    logits[..., 1] = 10.0
    boxes = torch.tensor([[0.8, 0.8, 0.2, 0.2], [0.4, 0.4, 0.4, 0.4]]).expand(2, 1, 2, 4)
    outputs = DetectionOutputs(logits.half(), boxes, enc_logits=logits[0].half(),
                               enc_boxes=boxes[0])
    losses = head.loss(outputs, head.ground_truth([sample([[20, 20, 60, 60]], [1])], boxes))
    for name in ('loss_bbox', 'loss_iou', 'd0.loss_bbox', 'enc_loss_bbox', 'enc_loss_iou'):
        assert losses[name].item() == pytest.approx(0, abs=1e-6), name
    assert all(value.dtype == torch.float32 for value in losses.values())


def test_class_agnostic_encoder_scores_object_with_one_logit():
    """query_select_method='agnostic' (RT-DETRv2): the encoder's top-k has one logit, matched and
    trained against the gts as one class. Encoder query 1 sits on the gt (class 2 of 3), query 0
    far away: the varifocal loss written out for one logit per query."""
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        head = MODELS.build(dict(type='RTDETRHead', num_classes=3, embed_dims=8,
                                 num_pred_layers=1, query_select_method='agnostic'))
    assert head.enc_cls_branch.out_features == 1 and head.cls_branches[0].out_features == 3
    gt_box = [0.4, 0.4, 0.4, 0.4]  # cxcywh of xyxy (20, 20, 60, 60) in 100 x 100
    enc_boxes = torch.tensor([[[0.9, 0.9, 0.1, 0.1], gt_box]])
    enc_logits = torch.tensor([[[1.5], [-0.5]]])
    outputs = DetectionOutputs(torch.randn(1, 1, 2, 3), torch.rand(1, 1, 2, 4) * 0.5 + 0.2,
                               enc_logits=enc_logits, enc_boxes=enc_boxes)
    losses = head.loss(outputs, head.ground_truth([sample([[20, 20, 60, 60]], [2])], enc_boxes))
    p0, p1 = (1 / (1 + math.exp(-v)) for v in (1.5, -0.5))
    expected = -math.log(p1) + 0.75 * p0 ** 2 * -math.log(1 - p0)  # IoU target 1; a negative
    assert losses['enc_loss_cls'].item() == pytest.approx(expected, rel=1e-5)
    assert losses['enc_loss_bbox'].item() == pytest.approx(0, abs=1e-6)
    assert losses['enc_loss_iou'].item() == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match='query_select_method'):
        MODELS.build(dict(type='RTDETRHead', num_classes=3, query_select_method='one2many'))
