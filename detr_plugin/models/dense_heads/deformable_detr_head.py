"""Deformable DETR's prediction heads and loss (Zhu et al. 2021, Sec. 4 and A.3-A.4)."""
import copy
import math
from typing import Dict, Optional, Tuple

import torch
from mmdet.models.layers import inverse_sigmoid
from mmdet.structures import SampleList
from mmdet.utils import InstanceList
from torch import Tensor, nn

from detr_plugin.registry import MODELS
from ..layers import MLP
from ..layers.predictions import DetectionOutputs, LayerPrediction
from ..task_modules import Matches
from .detr_head import DETRHead, GroundTruth, at_least_float32


def refine_boxes(reference: Tensor, delta: Tensor) -> Tensor:
    """Adds a predicted ``delta`` to a reference in inverse-sigmoid space.

    Args:
        reference: (..., 2) points (cx, cy) or (..., 4) boxes (cx, cy, w, h), in [0, 1].
        delta: (..., 4) unnormalized (cx, cy, w, h) offsets; for a point reference, w and h are
            predicted outright.

    Returns:
        (..., 4) boxes cxcywh in [0, 1], at least float32 (under autocast too: boxes refined
        layer after layer in bfloat16 would drift by its 3 significant digits).
    """
    delta, reference = at_least_float32(delta), at_least_float32(reference)
    if reference.shape[-1] == 4:
        return (delta + inverse_sigmoid(reference)).sigmoid()
    return torch.cat((delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]), -1).sigmoid()


@MODELS.register_module()
class DeformableDETRHead(DETRHead):
    """Per-layer class and box branches on sigmoid (focal-loss) classification.

    A box branch predicts an offset from the reference the decoder layer attended around, added in
    inverse-sigmoid space (:meth:`predict_layer`, called by the decoder after every layer).
    Without box refinement all layers share one class and one box branch and every layer samples
    around the same reference; with it every layer has its own, and the next layer samples around
    the refined box, detached. The
    two-stage variant adds one more pair, for the encoder's proposals, whose loss treats every
    object as class 0 (``enc_loss_*``).

    Args:
        num_classes: object classes (sigmoid outputs; no no-object class).
        embed_dims: width of the decoder output.
        num_layers: decoder layers (set by the detector).
        with_box_refine: one branch pair per layer instead of one shared pair (set by the detector).
        as_two_stage: add the encoder's branch pair (set by the detector).
        loss_cls: a sigmoid focal loss config (mmdet's ``FocalLoss``).
        loss_bbox / loss_iou / train_cfg / test_cfg: as :class:`DETRHead`.
    """

    def __init__(self,
                 num_classes: int,
                 embed_dims: int = 256,
                 num_layers: int = 6,
                 with_box_refine: bool = False,
                 as_two_stage: bool = False,
                 loss_cls: dict = dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                                       loss_weight=2.0),
                 loss_bbox: dict = dict(type='L1Loss', loss_weight=5.0),
                 loss_iou: dict = dict(type='GIoULoss', loss_weight=2.0),
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        self.num_layers = num_layers
        self.with_box_refine = with_box_refine
        self.as_two_stage = as_two_stage
        train_cfg = train_cfg or dict(assigner=dict(type='HungarianAssigner', match_costs=[
            dict(type='FocalLossCost', weight=2.0),
            dict(type='BBoxL1Cost', weight=5.0),
            dict(type='IoUCost', iou_mode='giou', weight=2.0)]))
        super().__init__(num_classes, embed_dims, no_object_weight=1.0, loss_cls=loss_cls,
                         loss_bbox=loss_bbox, loss_iou=loss_iou, train_cfg=train_cfg,
                         test_cfg=test_cfg, init_cfg=init_cfg)

    def _init_layers(self) -> None:
        fc_cls = nn.Linear(self.embed_dims, self.num_classes)
        fc_reg = MLP(self.embed_dims, self.embed_dims, 4, num_layers=3)
        num_branches = self.num_layers + int(self.as_two_stage)
        if self.with_box_refine:
            self.cls_branches = nn.ModuleList(copy.deepcopy(fc_cls) for _ in range(num_branches))
            self.reg_branches = nn.ModuleList(copy.deepcopy(fc_reg) for _ in range(num_branches))
        else:  # the same module at every index
            self.cls_branches = nn.ModuleList([fc_cls] * num_branches)
            self.reg_branches = nn.ModuleList([fc_reg] * num_branches)

    def init_weights(self) -> None:
        """Class bias at prior 0.01 (focal loss). Box branches start at their reference (last layer
        0); the first layer's boxes start at sigmoid(-2) ~ 0.12 of the image, except in the
        two-stage variant, whose references are boxes already. Clones start equal."""
        super().init_weights()
        bias = -math.log((1 - 0.01) / 0.01)
        with torch.no_grad():
            for fc_cls in self.cls_branches:
                fc_cls.bias.fill_(bias)
            for fc_reg in self.reg_branches:
                fc_reg.layers[-1].weight.zero_()
                fc_reg.layers[-1].bias.zero_()
            if not self.as_two_stage:
                self.reg_branches[0].layers[-1].bias[2:] = -2.0

    def forward(self, *args, **kwargs):
        raise NotImplementedError('DeformableDETRHead has no forward: the decoder calls '
                                  'predict_layer; use loss() / predict() on its outputs')

    # ------------------------------------------------------------ per layer
    def num_layers_to_run(self, num_layers: int) -> int:
        return num_layers

    def predict_layer(self, index: int, query: Tensor, reference: Tensor,
                      previous: Optional[LayerPrediction]) -> LayerPrediction:
        """Layer ``index``'s branches: query (bs, Q, C) and the reference it sampled around
        (bs, Q, 2|4) -> logits (bs, Q, num_classes) and boxes (bs, Q, 4) cxcywh in [0, 1], of
        every layer also at inference (as the original's auxiliary outputs)."""
        boxes = refine_boxes(reference, self.reg_branches[index](query))
        next_reference = boxes.detach() if self.with_box_refine else reference
        return LayerPrediction(self.cls_branches[index](query), boxes, next_reference)

    def predict_encoder(self, proposal_memory: Tensor,
                        proposals_unact: Tensor) -> Tuple[Tensor, Tensor]:
        """The encoder's branch pair (two-stage) on every token's proposal.

        Args:
            proposal_memory: (bs, N, C); proposals_unact: (bs, N, 4) in inverse-sigmoid space.

        Returns:
            Logits (bs, N, num_classes) and refined boxes (bs, N, 4) in inverse-sigmoid space
            (``+inf`` where the proposal is invalid).
        """
        if not self.as_two_stage:
            raise RuntimeError('predict_encoder needs a head built with as_two_stage=True')
        return (self.cls_branches[self.num_layers](proposal_memory),
                self.reg_branches[self.num_layers](proposal_memory) + proposals_unact)

    # ------------------------------------------------------------------ loss
    def loss(self, outputs: DetectionOutputs, gt: GroundTruth) -> Dict[str, Tensor]:
        """Losses of every decoder layer and (two-stage) of the encoder's proposals, logits
        (bs, N, K) and boxes (bs, N, 4) cxcywh in [0, 1], against class-agnostic targets."""
        losses = self.loss_by_outputs(outputs.logits, outputs.boxes, gt)
        if outputs.enc_logits is not None:
            losses.update(self.loss_encoder(outputs.enc_logits, outputs.enc_boxes, gt))
        return losses

    def loss_encoder(self, cls_logits: Tensor, boxes: Tensor, gt: GroundTruth) -> Dict[str, Tensor]:
        """Set loss of the encoder proposals with every gt relabelled 0 (one-class matching).

        In float32, also under mixed precision (as ``loss_by_outputs``): a half-precision sigmoid
        rounds to 1 for confident logits and turns their focal matching cost into -inf."""
        cls_logits = at_least_float32(cls_logits[None])  # one "layer"
        boxes = at_least_float32(boxes[None])
        gt = gt.class_agnostic()
        matches = self.match(cls_logits, boxes, gt)
        num_boxes = self.num_boxes_across_ranks(gt, like=boxes)
        matched = self.matched_boxes(boxes, gt, matches)
        loss_cls = self.loss_cls_per_layer(cls_logits, gt, matches, matched.ious, num_boxes)
        loss_bbox, loss_iou = self.loss_boxes_per_layer(boxes, matched, matches, num_boxes)
        return dict(enc_loss_cls=loss_cls[0], enc_loss_bbox=loss_bbox[0], enc_loss_iou=loss_iou[0])

    def loss_cls_per_layer(self, cls_logits: Tensor, gt: GroundTruth, matches: Matches,
                           ious: Optional[Tensor], num_boxes: Tensor) -> Tensor:
        """(L,) sigmoid focal loss of each layer, summed over queries and classes / num_boxes.
        Unmatched queries are negatives for every class (``ious`` unused)."""
        labels = self.classification_targets(cls_logits, gt, matches)  # num_classes: background
        num_layers = cls_logits.shape[0]
        # in float32: half-precision logits lose the small probabilities the focal term weighs
        loss = self.loss_cls(at_least_float32(cls_logits.flatten(0, 2)), labels.flatten(),
                             reduction_override='none')
        return loss.reshape(num_layers, -1).sum(1) / num_boxes

    # ------------------------------------------------------------- inference
    def predict(self, outputs: DetectionOutputs, batch_data_samples: SampleList,
                rescale: bool = True) -> InstanceList:
        """Detections of the last decoder layer, one InstanceData per image."""
        return self.predict_by_outputs(outputs.logits[-1], outputs.boxes[-1], batch_data_samples,
                                       rescale)

    def scores_and_labels(self, cls_logits: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Sigmoid scores; the ``max_per_img`` best (query, class) pairs, so a query may give
        several detections. Returns (bs, k) scores, labels and query indices."""
        bs, num_queries, num_classes = cls_logits.shape
        scores = cls_logits.sigmoid().reshape(bs, -1)  # (bs, Q * K), query-major
        k = min(self.test_cfg.get('max_per_img', 100), scores.shape[1])
        scores, index = scores.topk(k, dim=1)
        return scores, index % num_classes, index // num_classes
