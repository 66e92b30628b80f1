"""DeformableDETRHead: branch sharing and init, focal loss against a float64 formula, the
class-agnostic encoder loss, top-k over (query, class) pairs against brute force."""
import math

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

from detr_plugin.models.dense_heads import DeformableDETRHead
from detr_plugin.models.dense_heads.deformable_detr_head import refine_boxes
from detr_plugin.models.layers import DetectionOutputs


def make_head(**kwargs):
    cfg = dict(num_classes=3, embed_dims=8, num_layers=2, test_cfg=dict(max_per_img=5))
    cfg.update(kwargs)
    head = DeformableDETRHead(**cfg)
    head.init_weights()
    return head


def samples_with(boxes_per_image, labels_per_image, shape=(40, 50)):
    samples = []
    for boxes, labels in zip(boxes_per_image, labels_per_image):
        s = DetDataSample(metainfo=dict(img_shape=shape, ori_shape=shape, scale_factor=(1., 1.)))
        s.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                      labels=torch.tensor(labels, dtype=torch.long))
        samples.append(s)
    return samples


@pytest.mark.parametrize('refine,two_stage', [(False, False), (True, False), (True, True)])
def test_branches_and_init(refine, two_stage):
    head = make_head(with_box_refine=refine, as_two_stage=two_stage)
    assert len(head.cls_branches) == len(head.reg_branches) == 2 + two_stage
    shared = head.reg_branches[0] is head.reg_branches[1]
    assert shared == (not refine)
    prior = -math.log(0.99 / 0.01)
    for cls, reg in zip(head.cls_branches, head.reg_branches):
        torch.testing.assert_close(cls.bias, torch.full((3,), prior))
        assert not reg.layers[-1].weight.any()
    # w, h start at sigmoid(-2) on the first layer (all layers when shared); two-stage: at 0
    first = 0.0 if two_stage else -2.0
    torch.testing.assert_close(head.reg_branches[0].layers[-1].bias, torch.tensor([0, 0, first, first]))
    if refine:
        torch.testing.assert_close(head.reg_branches[1].layers[-1].bias, torch.zeros(4))
        # clones start equal
        torch.testing.assert_close(head.cls_branches[0].weight, head.cls_branches[1].weight)


def logit(p):
    return math.log(p / (1 - p))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_refine_boxes_by_hand():
    delta = torch.tensor([[0.3, -0.2, 0.5, -1.0]])
    box = torch.tensor([[0.4, 0.7, 0.2, 0.1]])
    expected = [sigmoid(d + logit(b)) for d, b in zip(delta[0].tolist(), box[0].tolist())]
    torch.testing.assert_close(refine_boxes(box, delta), torch.tensor([expected]))
    # a point reference: the offset moves the centre, w and h are predicted outright
    point = box[:, :2]
    expected = [sigmoid(0.3 + logit(0.4)), sigmoid(-0.2 + logit(0.7)), sigmoid(0.5), sigmoid(-1.0)]
    torch.testing.assert_close(refine_boxes(point, delta), torch.tensor([expected]))


def focal_float64(logits, targets, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss summed over all entries; targets one-hot (float)."""
    p = logits.double().sigmoid()
    t = targets.double()
    pt = p * t + (1 - p) * (1 - t)
    ce = -(t * p.log() + (1 - t) * (1 - p).log())
    return ((alpha * t + (1 - alpha) * (1 - t)) * (1 - pt)**gamma * ce).sum()


def test_focal_loss_per_layer_against_formula():
    torch.manual_seed(0)
    head = make_head()
    logits = torch.randn(2, 2, 4, 3)  # (L, bs, Q, K)
    boxes = torch.rand(2, 2, 4, 4) * 0.5 + 0.25
    samples = samples_with([[[5, 5, 20, 30], [10, 0, 40, 20]], []], [[2, 0], []])
    gt = head.ground_truth(samples, boxes)
    matches = head.match(logits, boxes, gt)
    num_boxes = torch.tensor(2.0)
    loss = head.loss_cls_per_layer(logits, gt, matches, None, num_boxes)
    for layer in range(2):
        targets = torch.zeros(2, 4, 3)
        for b, (q, g) in enumerate(matches.pairs[layer]):
            targets[b, q, gt.labels[b][g]] = 1.0
        expected = 2.0 * focal_float64(logits[layer], targets) / 2.0  # loss_weight 2, / num_boxes
        assert math.isclose(loss[layer].item(), expected.item(), rel_tol=1e-5)


def test_encoder_loss_is_class_agnostic():
    torch.manual_seed(0)
    head = make_head(with_box_refine=True, as_two_stage=True)
    logits = torch.randn(2, 30, 3)
    boxes = torch.rand(2, 30, 4) * 0.5 + 0.25
    gt_a = head.ground_truth(samples_with([[[5, 5, 20, 30]], [[0, 0, 9, 9]]], [[2], [1]]), boxes)
    gt_b = head.ground_truth(samples_with([[[5, 5, 20, 30]], [[0, 0, 9, 9]]], [[0], [0]]), boxes)
    a = head.loss_encoder(logits, boxes, gt_a)
    b = head.loss_encoder(logits, boxes, gt_b)
    assert set(a) == {'enc_loss_cls', 'enc_loss_bbox', 'enc_loss_iou'}
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    # the matched proposals' class-0 logit is the positive one
    gt = head.ground_truth(samples_with([[[5, 5, 20, 30]], [[0, 0, 9, 9]]], [[0], [0]]), boxes)
    matches = head.match(logits[None], boxes[None], gt)
    targets = torch.zeros(2, 30, 3)
    for bi, (q, _) in enumerate(matches.pairs[0]):
        targets[bi, q, 0] = 1.0
    expected = 2.0 * focal_float64(logits, targets) / 2.0
    assert math.isclose(a['enc_loss_cls'].item(), expected.item(), rel_tol=1e-5)


def test_loss_with_an_image_without_boxes():
    torch.manual_seed(0)
    head = make_head()
    hidden = torch.randn(2, 6, 8, requires_grad=True)
    predictions = [head.predict_layer(i, hidden, torch.rand(2, 6, 2), None) for i in range(2)]
    gt = head.ground_truth(samples_with([[], []], [[], []]), hidden)
    losses = head.loss(DetectionOutputs.from_layers(predictions), gt)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total) and losses['loss_bbox'] == 0 and losses['loss_cls'] > 0


def test_top_k_over_queries_and_classes_brute_force():
    torch.manual_seed(0)
    head = make_head()
    logits = torch.randn(2, 4, 3)
    scores, labels, queries = head.scores_and_labels(logits)
    for b in range(2):
        pairs = sorted(((logits[b, q, k].sigmoid().item(), q, k) for q in range(4) for k in range(3)),
                       reverse=True)[:5]
        assert [(q, k) for _, q, k in pairs] == list(zip(queries[b].tolist(), labels[b].tolist()))
        torch.testing.assert_close(scores[b], torch.tensor([s for s, _, _ in pairs]))


def test_predict_uses_last_layer_branches():
    torch.manual_seed(0)
    head = make_head(with_box_refine=True)
    for p in head.parameters():
        p.data.normal_()
    hidden = torch.randn(1, 4, 8)
    reference = torch.rand(1, 4, 4)
    head.eval()
    outputs = DetectionOutputs.from_layers([head.predict_layer(1, hidden, reference, None)])
    sample = samples_with([[]], [[]], shape=(10, 20))
    result = head.predict(outputs, sample, rescale=False)[0]
    logits = head.cls_branches[1](hidden)
    boxes = refine_boxes(reference, head.reg_branches[1](hidden))
    scores, labels, queries = head.scores_and_labels(logits)
    torch.testing.assert_close(result.scores, scores[0])
    expected = head.to_pixels(boxes[0, queries[0]], sample[0].metainfo, rescale=False)
    torch.testing.assert_close(result.bboxes, expected)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_encoder_matching_of_half_precision_logits_in_float32(dtype):
    """Under autocast the encoder's class logits are half precision. A confident proposal (logit
    8.5: sigmoid rounds to 1 in half precision, the focal cost to -inf in fp16) must not win the match against the
    proposal on the gt box: the cost is the float32 one, here written out in float64."""
    head = make_head(with_box_refine=True, as_two_stage=True)
    logits = torch.zeros(1, 2, 3)
    logits[0, 0, 0] = 8.5  # confident, far from the gt
    boxes = torch.tensor([[[0.95, 0.95, 0.9, 0.9], [0.1, 0.1, 0.05, 0.05]]])  # cxcywh
    samples = samples_with([[[3.75, 3, 6.25, 5]]], [[1]])  # (40, 50) image: cxcywh .1 .1 .05 .05

    def cost(logit, box):  # weights 2 (focal), 5 (L1), 2 (GIoU) of the default assigner
        p = torch.tensor(logit, dtype=torch.float64).sigmoid()
        focal = 0.25 * (1 - p)**2 * -(p + 1e-8).log() - 0.75 * p**2 * -(1 - p + 1e-8).log()
        gt = torch.tensor([0.1, 0.1, 0.05, 0.05], dtype=torch.float64)
        box = torch.tensor(box, dtype=torch.float64)
        corners = lambda b: torch.cat([b[:2] - b[2:] / 2, b[:2] + b[2:] / 2])
        a, g = corners(box), corners(gt)
        inter = (torch.min(a[2:], g[2:]) - torch.max(a[:2], g[:2])).clamp(min=0).prod()
        union = (a[2:] - a[:2]).prod() + (g[2:] - g[:2]).prod() - inter
        hull = (torch.max(a[2:], g[2:]) - torch.min(a[:2], g[:2])).prod()
        giou = inter / union - (hull - union) / hull
        return 2 * focal + 5 * (box - gt).abs().sum() - 2 * giou

    expected = min(range(2), key=lambda q: cost(logits[0, q, 0].item(), boxes[0, q].tolist()))
    assert expected == 1
    gt = head.ground_truth(samples, boxes)
    gt = gt._replace(labels=[torch.zeros(1, dtype=torch.long)])
    matches_fp32 = head.match(logits[None], boxes[None], gt)
    assert matches_fp32.pairs[0][0][0].tolist() == [expected]
    # through loss_encoder: the matched query is the positive of the class loss
    losses = head.loss_encoder(logits.to(dtype), boxes, head.ground_truth(samples, boxes))
    targets = torch.zeros(1, 2, 3)
    targets[0, expected, 0] = 1.0
    want = 2.0 * focal_float64(logits.to(dtype).float(), targets) / 1.0
    assert math.isclose(losses['enc_loss_cls'].item(), want.item(), rel_tol=1e-4)
