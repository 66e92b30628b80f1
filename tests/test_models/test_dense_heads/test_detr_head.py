"""DETRHead losses and post-processing against values computed by hand."""
import math

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

from detr_plugin.models.dense_heads import DETRHead


def sample(boxes, labels, img_shape=(100, 200), scale_factor=(2.0, 2.0)):
    s = DetDataSample(metainfo=dict(img_shape=img_shape, scale_factor=scale_factor,
                                    batch_input_shape=img_shape))
    s.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                  labels=torch.tensor(labels, dtype=torch.long))
    return s


def giou(a, b):
    """GIoU of two xyxy boxes, by the definition."""
    inter_w = max(0., min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0., min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def cxcywh_to_xyxy(b):
    return [b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2]


def test_loss_matches_hand_computation():
    head = DETRHead(num_classes=2, embed_dims=8)
    # gt: class 1, xyxy (40, 20, 120, 60) in a 100 x 200 (h x w) image -> cxcywh (0.4, 0.4, 0.4, 0.4)
    gt_norm = [0.4, 0.4, 0.4, 0.4]
    data = [sample([[40., 20., 120., 60.]], [1])]
    # one layer, one image, two queries: query 0 predicts class 1 near the gt, query 1 far away
    logits = torch.tensor([[[[0.1, 2.0, -1.0], [0.3, -0.2, 1.5]]]])
    boxes = torch.tensor([[[[0.42, 0.38, 0.35, 0.45], [0.9, 0.9, 0.1, 0.1]]]])
    losses = head.loss_by_outputs(logits, boxes, head.ground_truth(data, boxes))

    def ce(row, target):
        return -(row[target] - math.log(sum(math.exp(v) for v in row)))

    expected_cls = (1.0 * ce([0.1, 2.0, -1.0], 1) + 0.1 * ce([0.3, -0.2, 1.5], 2)) / 1.1
    pred = [0.42, 0.38, 0.35, 0.45]
    expected_l1 = 5.0 * sum(abs(p - g) for p, g in zip(pred, gt_norm))
    expected_iou = 2.0 * (1 - giou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(gt_norm)))
    assert losses['loss_cls'].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses['loss_bbox'].item() == pytest.approx(expected_l1, rel=1e-5)
    assert losses['loss_iou'].item() == pytest.approx(expected_iou, rel=1e-5)


def test_every_layer_is_supervised_and_named():
    head = DETRHead(num_classes=3, embed_dims=8)
    hidden = torch.randn(3, 2, 5, 8)
    data = [sample([[0., 0., 50., 50.], [10., 10., 30., 90.]], [0, 2]), sample([], [])]
    losses = head.loss(hidden, data)
    expected = {f'{p}loss_{n}' for p in ('', 'd0.', 'd1.') for n in ('cls', 'bbox', 'iou')}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())


def test_batch_without_boxes_keeps_box_branch_in_graph():
    head = DETRHead(num_classes=3, embed_dims=8)
    hidden = torch.randn(2, 2, 4, 8, requires_grad=True)
    losses = head.loss(hidden, [sample([], []), sample([], [])])
    assert losses['loss_bbox'].item() == 0 and losses['loss_iou'].item() == 0
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in head.fc_reg.parameters())  # DDP needs every grad


def test_degenerate_boxes_give_finite_losses():
    head = DETRHead(num_classes=2, embed_dims=8)
    data = [sample([[10., 10., 10., 40.], [5., 5., 60., 5.]], [0, 1])]  # zero width / height
    hidden = torch.randn(2, 1, 4, 8, requires_grad=True)
    losses = head.loss(hidden, data)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(hidden.grad).all()


def test_predict_rescales_to_original_image():
    head = DETRHead(num_classes=2, embed_dims=8, test_cfg=dict(max_per_img=1))
    logits = torch.tensor([[[0., 3., 0.], [5., 0., 0.]]])       # query 1 is the more confident
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.5, 0.5, 1.0]]])
    data = [sample([], [], img_shape=(100, 200), scale_factor=(2.0, 4.0))]
    result = head.predict_by_outputs(logits, boxes, data, rescale=True)[0]
    p = math.exp(5) / (math.exp(5) + 2)
    assert result.scores.tolist() == pytest.approx([p], rel=1e-6)
    assert result.labels.tolist() == [0]
    # cxcywh (0.25, 0.5, 0.5, 1.0) of a 200 x 100 (w x h) image -> xyxy (0, 0, 100, 100) pixels,
    # then divided by the scale factor (w 2, h 4)
    assert result.bboxes.tolist() == [pytest.approx([0., 0., 50., 25.])]



COUNT_CASES = [((3, 0), 1.5), ((0, 0), 1.0), ((5, 2), 3.5)]  # boxes on ranks 0, 1; their mean


def _num_boxes_on_rank(rank, port, results):
    import torch.distributed as dist

    from detr_plugin.models.dense_heads.detr_head import GroundTruth
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
    try:
        for case, (counts, _) in enumerate(COUNT_CASES):
            n = counts[rank]
            gt = GroundTruth([torch.zeros(n, dtype=torch.long)], [torch.rand(n, 4)],
                             torch.zeros(n, dtype=torch.long), torch.rand(n, 4))
            results[(case, rank)] = float(DETRHead.num_boxes_across_ranks(gt, like=torch.zeros(1)))
    finally:
        dist.destroy_process_group()


def test_num_boxes_is_averaged_across_ranks():
    """Two gloo processes with different box counts get the same normaliser: their mean (>= 1)."""
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_num_boxes_on_rank, args=(port, results), nprocs=2)
    assert dict(results) == {(case, rank): expected for case, (_, expected) in enumerate(COUNT_CASES)
                             for rank in (0, 1)}
