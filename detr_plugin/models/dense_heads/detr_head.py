"""DETR's prediction head and set-prediction loss (Carion et al. 2020, Sec. 3.1)."""
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from mmdet.structures import SampleList
from mmdet.utils import InstanceList, reduce_mean
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor, nn

from detr_plugin.registry import MODELS, TASK_UTILS, build_in_scope
from ..layers import MLP
from ..task_modules import Matches, cxcywh_to_xyxy, xyxy_to_cxcywh


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 when it is in a 16-bit type (losses and boxes under mixed precision),
    else unchanged (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class GroundTruth(NamedTuple):
    """Ground truth of a batch, in the normalized frame the heads predict in."""
    labels: List[Tensor]      # bs x (G_i,) long
    boxes: List[Tensor]       # bs x (G_i, 4) cxcywh, normalized by the head's frame (see
                              # DETRHead.box_frame: the image or the padded batch)
    all_labels: Tensor        # (G,) concatenated over the batch
    all_boxes: Tensor         # (G, 4)

    def class_agnostic(self) -> 'GroundTruth':
        """The same boxes, every label 0 ("object"), for one-class encoder heads."""
        return GroundTruth([torch.zeros_like(l) for l in self.labels], self.boxes,
                           torch.zeros_like(self.all_labels), self.all_boxes)


class MatchedBoxes(NamedTuple):
    """The M matched (prediction, gt) pairs of a set of layers, as every loss term reads them."""
    pred: Tensor              # (M, 4) cxcywh, the matched predictions, with gradient
    target: Tensor            # (M, 4) cxcywh, their gts
    iou_loss: Tensor          # (M,) the head's loss_iou of each pair (xyxy), with gradient
    ious: Optional[Tensor]    # (M,) the pairs' IoUs, detached (IoU-aware class targets), or
                              # None for a head whose class targets do not use them


def matched_pairs(boxes: Tensor, gt: GroundTruth,
                  matches: Matches) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The (M, 4) matched predictions of (L, bs, Q, 4) cxcywh ``boxes`` and their gts, cxcywh,
    then both in xyxy (one conversion of the stacked pair)."""
    pred = boxes.flatten(0, 2)[matches.pred_index]
    target = gt.all_boxes[matches.gt_index]
    pred_xyxy, target_xyxy = cxcywh_to_xyxy(torch.stack([pred, target]))
    return pred, target, pred_xyxy, target_xyxy


@MODELS.register_module()
class DETRHead(BaseModule):
    """Class and box predictions for every query, the Hungarian set loss, and post-processing.

    The class branch predicts ``num_classes + 1`` logits (no-object last), trained with
    cross-entropy where the no-object class weighs ``no_object_weight``. The box branch is a
    3-layer MLP predicting normalized (cx, cy, w, h). Every decoder layer is matched and
    supervised; the last layer's losses are ``loss_*``, the earlier ones ``d{i}.loss_*``.

    Args:
        num_classes: number of object classes (without no-object).
        embed_dims: width of the decoder output.
        no_object_weight: cross-entropy weight of the no-object class.
        loss_cls / loss_bbox / loss_iou: mmdet loss configs; ``loss_iou`` takes xyxy boxes.
        train_cfg: ``dict(assigner=...)``, a Hungarian assigner config.
        test_cfg: ``dict(max_per_img=...)``.
    """
    # The metainfo size that normalized boxes are fractions of. DETR and Deformable DETR mask the
    # batch padding, and their positions and reference points span the image: 'img_shape'.
    box_frame = 'img_shape'

    def __init__(self,
                 num_classes: int,
                 embed_dims: int = 256,
                 no_object_weight: float = 0.1,
                 loss_cls: dict = dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                 loss_bbox: dict = dict(type='L1Loss', loss_weight=5.0),
                 loss_iou: dict = dict(type='GIoULoss', loss_weight=2.0),
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.no_object_weight = no_object_weight
        self.loss_cls = build_in_scope(MODELS, loss_cls)
        self.loss_bbox = build_in_scope(MODELS, loss_bbox)
        self.loss_iou = build_in_scope(MODELS, loss_iou)
        train_cfg = train_cfg or dict(assigner=dict(type='HungarianAssigner', match_costs=[
            dict(type='ClassificationCost', weight=1.0),
            dict(type='BBoxL1Cost', weight=5.0),
            dict(type='IoUCost', iou_mode='giou', weight=2.0)]))
        self.assigner = build_in_scope(TASK_UTILS, train_cfg['assigner'])
        self.test_cfg = test_cfg or dict(max_per_img=100)
        self._init_layers()

    def _init_layers(self) -> None:
        self.fc_cls = nn.Linear(self.embed_dims, self.num_classes + 1)
        self.fc_reg = MLP(self.embed_dims, self.embed_dims, 4, num_layers=3)

    def forward(self, hidden_states: Tensor) -> Tuple[Tensor, Tensor]:
        """hidden_states: (L, bs, Q, C) decoder outputs.
        Returns class logits (L, bs, Q, num_classes + 1) and boxes (L, bs, Q, 4), cxcywh in [0, 1]."""
        return self.fc_cls(hidden_states), self.fc_reg(hidden_states).sigmoid()

    def loss(self, hidden_states: Tensor, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        cls_logits, boxes = self(hidden_states)
        return self.loss_by_outputs(cls_logits, boxes,
                                    self.ground_truth(batch_data_samples, boxes))

    def predict(self, hidden_states: Tensor, batch_data_samples: SampleList,
                rescale: bool = True) -> InstanceList:
        cls_logits, boxes = self(hidden_states[-1:])
        return self.predict_by_outputs(cls_logits[0], boxes[0], batch_data_samples, rescale)

    # ------------------------------------------------------------------ loss
    def loss_by_outputs(self, cls_logits: Tensor, boxes: Tensor,
                        gt: GroundTruth) -> Dict[str, Tensor]:
        """cls_logits: (L, bs, Q, K'); boxes: (L, bs, Q, 4) cxcywh normalized. Losses of all L layers.

        Losses are computed in float32 (float64 for a float64 model), also under mixed
        precision."""
        cls_logits, boxes = at_least_float32(cls_logits), at_least_float32(boxes)
        matches = self.match(cls_logits, boxes, gt)
        num_boxes = self.num_boxes_across_ranks(gt, like=boxes)
        matched = self.matched_boxes(boxes, gt, matches)
        loss_cls = self.loss_cls_per_layer(cls_logits, gt, matches, matched.ious, num_boxes)
        loss_bbox, loss_iou = self.loss_boxes_per_layer(boxes, matched, matches, num_boxes)
        return self.name_losses(loss_cls=loss_cls, loss_bbox=loss_bbox, loss_iou=loss_iou)

    @staticmethod
    def num_boxes_across_ranks(gt: GroundTruth, like: Tensor) -> Tensor:
        """() the loss normaliser: ground-truth boxes per rank, averaged over all ranks
        (at least 1).

        The same on every rank, as in the original DETR: a rank with few (or no) boxes does not
        weigh its few matches more than the others, so DDP's averaged gradient equals that of one
        process holding the whole batch."""
        # a fill, not a copy of a host value: no host wait
        count = torch.full((), float(len(gt.all_labels)), dtype=like.dtype, device=like.device)
        return reduce_mean(count).clamp(min=1.0)

    @classmethod
    def frame_size(cls, metainfo: dict) -> Tuple[int, int]:
        """(h, w) in pixels of the frame normalized boxes refer to (``box_frame``)."""
        return tuple(metainfo.get(cls.box_frame, metainfo['img_shape'])[:2])

    @classmethod
    def ground_truth(cls, batch_data_samples: SampleList, like: Tensor) -> GroundTruth:
        """Normalizes every image's gt boxes (xyxy pixels) by its frame to cxcywh in [0, 1], in
        the dtype of ``like`` but at least float32 (never rounded to half precision under AMP)."""
        dtype = torch.promote_types(like.dtype, torch.float32)
        # every frame's (w, h, w, h) in one copy that the host does not wait for
        frames = [cls.frame_size(sample.metainfo) for sample in batch_data_samples]
        scales = torch.tensor([(w, h, w, h) for h, w in frames], dtype=dtype)
        scales = scales.to(like.device, non_blocking=True)  # (bs, 4)
        labels, boxes = [], []
        for sample, scale in zip(batch_data_samples, scales):
            gt_boxes = sample.gt_instances.bboxes
            gt_boxes = gt_boxes.tensor if hasattr(gt_boxes, 'tensor') else gt_boxes
            boxes.append(xyxy_to_cxcywh(gt_boxes.to(dtype) / scale))
            labels.append(sample.gt_instances.labels.long())
        return GroundTruth(labels, boxes, torch.cat(labels), torch.cat(boxes).reshape(-1, 4))

    def match(self, cls_logits: Tensor, boxes: Tensor, gt: GroundTruth) -> Matches:
        """Hungarian matching of every layer and image (one host wait)."""
        return self.match_sets((cls_logits, boxes, gt))[0]

    def match_sets(self, *sets: Tuple[Tensor, Tensor, GroundTruth]) -> List[Matches]:
        """:meth:`match` of several (logits, boxes, gt) sets, with one host wait for them all."""
        return self.assigner.match_sets([(logits.detach(), boxes.detach(), gt.labels, gt.boxes)
                                         for logits, boxes, gt in sets])

    def classification_targets(self, cls_logits: Tensor, gt: GroundTruth,
                               matches: Matches) -> Tensor:
        """(L, bs, Q) class index of every query: its matched gt's label, else ``num_classes``."""
        labels = torch.full(cls_logits.shape[:3], self.num_classes, dtype=torch.long,
                            device=cls_logits.device)
        labels.view(-1)[matches.pred_index] = gt.all_labels[matches.gt_index]
        return labels

    def matched_boxes(self, boxes: Tensor, gt: GroundTruth, matches: Matches) -> MatchedBoxes:
        """The matched pairs of (L, bs, Q, 4) cxcywh ``boxes``, indexed and converted once for
        the box losses and the class targets, with their :meth:`iou_terms`."""
        pred, target, pred_xyxy, target_xyxy = matched_pairs(boxes, gt, matches)
        return MatchedBoxes(pred, target, *self.iou_terms(pred_xyxy, target_xyxy))

    def iou_terms(self, pred_xyxy: Tensor,
                  target_xyxy: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """(M,) ``loss_iou`` of each matched pair, and their IoUs for the class targets: None
        here (the targets are the gts' labels)."""
        return self.loss_iou(pred_xyxy, target_xyxy, reduction_override='none'), None

    def loss_cls_per_layer(self, cls_logits: Tensor, gt: GroundTruth, matches: Matches,
                           ious: Optional[Tensor], num_boxes: Tensor) -> Tensor:
        """(L,) cross-entropy of each layer: a mean over queries weighted by class weight.
        ``ious``, the matched pairs' (:class:`MatchedBoxes`), are unused: the targets are the
        matched gts' labels."""
        labels = self.classification_targets(cls_logits, gt, matches)
        weights = torch.where(labels == self.num_classes, self.no_object_weight, 1.0).to(cls_logits.dtype)
        num_layers = cls_logits.shape[0]
        loss = self.loss_cls(cls_logits.flatten(0, 2), labels.flatten(), weight=weights.flatten(),
                             reduction_override='none')
        return loss.view(num_layers, -1).sum(1) / weights.view(num_layers, -1).sum(1)

    def loss_boxes_per_layer(self, boxes: Tensor, matched: MatchedBoxes, matches: Matches,
                             num_boxes: Tensor) -> Tuple[Tensor, Tensor]:
        """(L,) L1 and (L,) IoU losses of each layer of (L, bs, Q, 4) ``boxes``, summed over the
        ``matched`` pairs / num_boxes."""
        num_layers = boxes.shape[0]
        if len(matches.gt_index) == 0:  # keeps every box parameter in the graph (DDP needs it)
            zero = boxes.sum() * 0
            return zero.expand(num_layers), zero.expand(num_layers)
        l1 = self.loss_bbox(matched.pred, matched.target, reduction_override='none').sum(-1)
        layer = matches.pred_index // boxes[0, ..., 0].numel()
        per_layer = boxes.new_zeros(2, num_layers).index_add_(
            1, layer, torch.stack((l1, matched.iou_loss)))
        return (per_layer / num_boxes).unbind()

    @staticmethod
    def name_losses(**per_layer: Tensor) -> Dict[str, Tensor]:
        """mmdet naming: the last layer's losses plain, earlier layers' prefixed ``d{i}.``."""
        losses = {}
        for name, values in per_layer.items():
            losses[name] = values[-1]
            for i, value in enumerate(values[:-1]):
                losses[f'd{i}.{name}'] = value
        return losses

    # ------------------------------------------------------------- inference
    def predict_by_outputs(self, cls_logits: Tensor, boxes: Tensor, batch_data_samples: SampleList,
                           rescale: bool = True) -> InstanceList:
        """cls_logits: (bs, Q, K'); boxes: (bs, Q, 4) of the last layer. One InstanceData per image
        with ``scores``, ``labels`` and ``bboxes`` (xyxy pixels of the original image if rescale),
        float32 also under mixed precision."""
        cls_logits, boxes = cls_logits.float(), boxes.float()
        scores, labels, keep = self.scores_and_labels(cls_logits)
        results = []
        for b, sample in enumerate(batch_data_samples):
            box = boxes[b] if keep is None else boxes[b][keep[b]]
            results.append(InstanceData(scores=scores[b], labels=labels[b],
                                        bboxes=self.to_pixels(box, sample.metainfo, rescale)))
        return results

    def scores_and_labels(self, cls_logits: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Softmax without no-object, one label per query; keeps the ``max_per_img`` best queries.
        Returns (bs, k) scores, (bs, k) labels and the (bs, k) kept query indices (None: all kept)."""
        scores, labels = cls_logits.softmax(-1)[..., :-1].max(-1)
        k = self.test_cfg.get('max_per_img', scores.shape[1])
        if k >= scores.shape[1]:
            return scores, labels, None
        scores, keep = scores.topk(k, dim=1)
        return scores, labels.gather(1, keep), keep

    @classmethod
    def to_pixels(cls, boxes: Tensor, metainfo: dict, rescale: bool) -> Tensor:
        """(n, 4) normalized cxcywh -> (n, 4) xyxy pixels, clamped to the image, optionally
        mapped back to the original image size."""
        frame_h, frame_w = cls.frame_size(metainfo)
        boxes = cxcywh_to_xyxy(boxes) * boxes.new_tensor([frame_w, frame_h, frame_w, frame_h])
        h, w = metainfo['img_shape'][:2]
        boxes[:, 0::2].clamp_(0, w)
        boxes[:, 1::2].clamp_(0, h)
        if rescale:
            boxes = boxes / boxes.new_tensor(metainfo['scale_factor']).repeat(2)
        return boxes
