"""RT-DETR's prediction heads, set loss with varifocal classification, and top-k post-processing."""
import math
from typing import Dict, Optional, Tuple

import torch
from mmdet.models.layers import inverse_sigmoid
from mmdet.structures import SampleList
from mmdet.utils import InstanceList
from torch import Tensor, nn

from detr_plugin.registry import MODELS
from ..layers import MLP
from ..layers.denoising import DenoisingGroups
from ..layers.predictions import DetectionOutputs, LayerPrediction
from ..task_modules import Matches, box_overlaps
from .detr_head import DETRHead, GroundTruth, at_least_float32, matched_pairs


@MODELS.register_module()
class RTDETRHead(DETRHead):
    """One class head and one box head per decoder layer plus one pair for the encoder tokens.

    After every decoder layer (:meth:`predict_layer`, called by :class:`RTDETRDecoder`) the box
    head predicts a delta added to the layer's reference box in inverse-sigmoid space; the refined
    box, detached, is the next layer's reference. The class heads predict ``num_classes`` sigmoid
    logits. The loss (varifocal + L1 + GIoU) supervises every decoder layer, the encoder's top-k
    queries (matched on their own) and every layer's denoising queries (matched by construction).
    Names: ``loss_*`` for the last layer, ``d{i}.loss_*`` for the others, ``enc_loss_*`` for the
    encoder, ``dn_loss_*`` and ``d{i}.dn_loss_*`` for the denoising queries. Inference keeps the
    ``max_per_img`` best (query, class) pairs of the sigmoid scores.

    Args:
        num_classes: object classes.
        embed_dims: decoder width.
        num_pred_layers: decoder layers (set by the detector from its decoder).
        eval_idx: the layer whose output is the prediction at inference (negative counts from
            the end); the layers after it are not run then.
        query_select_method: 'default' (the encoder scores every class; a token's score is its
            best class's) or 'agnostic' (RT-DETRv2: the encoder scores "object" with one logit,
            trained and matched against every gt relabelled as one class; the original matched
            the one-logit scores against the gts' own labels, which indexes out of range for
            any label but 0).
        loss_cls / loss_bbox / loss_iou: loss configs (``RTDETRVarifocalLoss``, L1, GIoU: a
            :class:`GIoULoss`, whose IoU term is the class target).
        train_cfg: ``dict(assigner=...)``; default: focal class cost 2, L1 5, GIoU 2.
        test_cfg: ``dict(max_per_img=300)``.
    """
    # RT-DETR has no padding mask: its anchors and attention span the whole padded batch, so its
    # boxes are fractions of that (the original always feeds unpadded 640x640 images, where the
    # two frames coincide).
    box_frame = 'batch_input_shape'

    def __init__(self,
                 num_classes: int,
                 embed_dims: int = 256,
                 num_pred_layers: int = 6,
                 eval_idx: int = -1,
                 query_select_method: str = 'default',
                 loss_cls: dict = dict(type='RTDETRVarifocalLoss', alpha=0.75, gamma=2.0,
                                       loss_weight=1.0),
                 loss_bbox: dict = dict(type='L1Loss', loss_weight=5.0),
                 loss_iou: dict = dict(type='GIoULoss', loss_weight=2.0),
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        if not -num_pred_layers <= eval_idx < num_pred_layers:
            raise ValueError(f'eval_idx={eval_idx} is out of range for {num_pred_layers} layers')
        if query_select_method not in ('default', 'agnostic'):
            raise ValueError(f"query_select_method must be 'default' or 'agnostic', got "
                             f'{query_select_method!r}')
        self.num_pred_layers = num_pred_layers
        self.eval_idx = eval_idx % num_pred_layers
        self.class_agnostic_encoder = query_select_method == 'agnostic'
        train_cfg = train_cfg or dict(assigner=dict(type='HungarianAssigner', match_costs=[
            dict(type='FocalLossCost', weight=2.0, alpha=0.25, gamma=2.0),
            dict(type='BBoxL1Cost', weight=5.0),
            dict(type='IoUCost', iou_mode='giou', weight=2.0)]))
        super().__init__(num_classes, embed_dims, loss_cls=loss_cls, loss_bbox=loss_bbox,
                         loss_iou=loss_iou, train_cfg=train_cfg,
                         test_cfg=test_cfg or dict(max_per_img=300), init_cfg=init_cfg)
        if not hasattr(self.loss_iou, 'losses_and_ious'):
            raise ValueError(f'{type(self).__name__}: loss_iou must be a GIoULoss (its IoU term '
                             f'gives the class targets), got {type(self.loss_iou).__name__}')

    def _init_layers(self) -> None:
        c, k = self.embed_dims, self.num_classes
        self.cls_branches = nn.ModuleList(nn.Linear(c, k) for _ in range(self.num_pred_layers))
        self.reg_branches = nn.ModuleList(MLP(c, c, 4, 3) for _ in range(self.num_pred_layers))
        self.enc_cls_branch = nn.Linear(c, 1 if self.class_agnostic_encoder else k)
        self.enc_reg_branch = MLP(c, c, 4, 3)
        prior_bias = -math.log((1 - 0.01) / 0.01)  # every class starts at probability 0.01
        for cls in (*self.cls_branches, self.enc_cls_branch):
            nn.init.constant_(cls.bias, prior_bias)
        for reg in (*self.reg_branches, self.enc_reg_branch):  # boxes start at their references
            nn.init.zeros_(reg.layers[-1].weight)
            nn.init.zeros_(reg.layers[-1].bias)

    def forward(self, *args, **kwargs):
        raise NotImplementedError('RTDETRHead has no forward: RTDETRDecoder calls predict_encoder '
                                  'and predict_layer; use loss() / predict() on its outputs')

    # ------------------------------------------------------------ per layer
    def predict_encoder(self, memory: Tensor, anchors_unact: Tensor) -> Tuple[Tensor, Tensor]:
        """Scores and boxes every memory token: memory (bs, N, C), anchors (1, N, 4) in
        inverse-sigmoid space -> logits (bs, N, K) and boxes (bs, N, 4) in inverse-sigmoid space."""
        return self.enc_cls_branch(memory), self.enc_reg_branch(memory) + anchors_unact

    def num_layers_to_run(self, num_layers: int) -> int:
        """Every layer in training; up to ``eval_idx`` at inference."""
        return num_layers if self.training else self.eval_idx + 1

    def predict_layer(self, index: int, query: Tensor, reference: Tensor,
                      previous: Optional[LayerPrediction]) -> LayerPrediction:
        """Layer ``index``'s box is ``sigmoid(delta + inverse_sigmoid(reference))``; the next
        layer samples around it, detached. In training the supervised box of a layer after the
        first is computed from the previous layer's box *with* its gradient (``carry``), so
        every box loss also trains the previous layer's box head (DINO's look-forward-twice).
        Logits only where they are used: every layer in training, ``eval_idx`` at inference.

        Args:
            query: (bs, Q, C) the layer's output; reference: (bs, Q, 4) cxcywh in [0, 1].
        """
        delta = self.reg_branches[index](query)
        box = (delta + inverse_sigmoid(reference)).sigmoid()
        supervised = box
        if self.training and previous is not None:
            supervised = (delta + inverse_sigmoid(previous.carry)).sigmoid()
        logits = None
        if self.training or index == self.eval_idx:
            logits = self.cls_branches[index](query)
        return LayerPrediction(logits, supervised, box.detach(), carry=box)

    # ------------------------------------------------------------------ loss
    def loss(self, outputs: DetectionOutputs, gt: GroundTruth) -> Dict[str, Tensor]:
        """Losses of every decoder layer, the encoder top-k and the denoising queries.

        Matching and losses are computed in float32 (float64 for a float64 model), also under
        mixed precision."""
        logits, boxes = at_least_float32(outputs.logits), at_least_float32(outputs.boxes)
        num_boxes = self.num_boxes_across_ranks(gt, like=boxes)
        enc_logits = at_least_float32(outputs.enc_logits[None])
        enc_boxes = at_least_float32(outputs.enc_boxes[None])
        if self.class_agnostic_encoder:  # one "object" logit: matched against one class
            agnostic = gt.class_agnostic()
            matches, enc_matches = self.match_sets((logits, boxes, gt),
                                                   (enc_logits, enc_boxes, agnostic))
            per_layer = self.losses_per_layer(logits, boxes, gt, matches, num_boxes)
            enc = self.losses_per_layer(enc_logits, enc_boxes, agnostic, enc_matches, num_boxes)
            per_layer = {name: torch.cat([per_layer[name], enc[name]]) for name in per_layer}
        else:  # the encoder's top-k is matched with the decoder layers, as one more layer
            per_layer = self.losses_with_matching(
                torch.cat([logits, enc_logits]),  # (L + 1, bs, Q, K)
                torch.cat([boxes, enc_boxes]), gt, num_boxes)
        losses = self.name_losses(**{name: value[:-1] for name, value in per_layer.items()})
        losses.update({f'enc_{name}': value[-1] for name, value in per_layer.items()})
        if outputs.denoising is not None:
            dn = outputs.denoising
            dn_matches = self.denoising_matches(dn.groups, dn.logits.shape[0])
            per_layer = self.losses_per_layer(at_least_float32(dn.logits),
                                              at_least_float32(dn.boxes), gt, dn_matches,
                                              num_boxes * dn.groups.num_groups)
            losses.update(self.name_losses(**{f'dn_{n}': v for n, v in per_layer.items()}))
        return losses

    def losses_with_matching(self, logits: Tensor, boxes: Tensor, gt: GroundTruth,
                             num_boxes: Tensor) -> Dict[str, Tensor]:
        """:meth:`losses_per_layer` of (L, bs, Q, K) logits and (L, bs, Q, 4) boxes, each layer
        Hungarian-matched to ``gt``."""
        return self.losses_per_layer(logits, boxes, gt, self.match(logits, boxes, gt), num_boxes)

    def losses_per_layer(self, logits: Tensor, boxes: Tensor, gt: GroundTruth, matches: Matches,
                         num_boxes: Tensor) -> Dict[str, Tensor]:
        """(L,) class, L1 and IoU losses of each layer of (L, bs, Q, K) logits / (L, bs, Q, 4),
        all from one indexing and conversion of the matched pairs."""
        matched = self.matched_boxes(boxes, gt, matches)
        loss_cls = self.loss_cls_per_layer(logits, gt, matches, matched.ious, num_boxes)
        loss_bbox, loss_iou = self.loss_boxes_per_layer(boxes, matched, matches, num_boxes)
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox, loss_iou=loss_iou)

    def iou_terms(self, pred_xyxy: Tensor, target_xyxy: Tensor) -> Tuple[Tensor, Tensor]:
        """(M,) ``loss_iou`` of each matched pair and their IoUs, the class targets: the GIoU
        loss's own IoU term (``loss_iou`` is a :class:`GIoULoss`)."""
        return self.loss_iou.losses_and_ious(pred_xyxy, target_xyxy)

    @staticmethod
    def matched_ious(boxes: Tensor, gt: GroundTruth, matches: Matches) -> Tensor:
        """(M,) IoUs of the matched pairs of (L, bs, Q, 4) ``boxes``, detached, for a set whose
        box losses use other matches (D-FINE's classification)."""
        *_, pred, target = matched_pairs(boxes.detach(), gt, matches)
        return box_overlaps(pred, target, is_aligned=True)

    def loss_cls_per_layer(self, cls_logits: Tensor, gt: GroundTruth, matches: Matches,
                           ious: Optional[Tensor], num_boxes: Tensor) -> Tensor:
        """(L,) varifocal loss of each layer: the matched class's target is the IoU of the query's
        box with its gt (``ious``, (M,) of the matched pairs); summed over queries and classes,
        divided by ``num_boxes``."""
        num_layers = cls_logits.shape[0]
        labels = self.classification_targets(cls_logits, gt, matches)  # (L, bs, Q)
        targets = cls_logits.new_zeros(labels.numel())
        if len(matches.pred_index):
            targets[matches.pred_index] = ious.to(targets.dtype)
        loss = self.loss_cls(cls_logits.flatten(0, 2), labels.flatten(), targets,
                             reduction_override='none')  # (L * bs * Q, K)
        return loss.view(num_layers, -1).sum(1) / num_boxes

    def classification_targets(self, cls_logits: Tensor, gt: GroundTruth,
                               matches: Matches) -> Tensor:
        """(L, bs, Q) class index of every query: its matched gt's label, else the number of
        logits K (no object; K = 1 for a class-agnostic encoder head)."""
        labels = torch.full(cls_logits.shape[:3], cls_logits.shape[-1], dtype=torch.long,
                            device=cls_logits.device)
        labels.view(-1)[matches.pred_index] = gt.all_labels[matches.gt_index]
        return labels

    @staticmethod
    def denoising_matches(dn: DenoisingGroups, num_layers: int) -> Matches:
        """Each positive denoising query reconstructs its own gt, on every layer."""
        per_layer = dn.query.shape[0] * dn.query.shape[1]  # bs * D
        layer_offsets = torch.arange(num_layers, device=dn.pred_index.device) * per_layer
        pred_index = (layer_offsets[:, None] + dn.pred_index[None]).flatten()
        return Matches(pairs=[], pred_index=pred_index, gt_index=dn.gt_index.repeat(num_layers))

    # ------------------------------------------------------------- inference
    def predict(self, outputs: DetectionOutputs, batch_data_samples: SampleList,
                rescale: bool = True) -> InstanceList:
        """Detections of the last computed decoder layer (``eval_idx`` at inference)."""
        return self.predict_by_outputs(outputs.logits[-1], outputs.boxes[-1], batch_data_samples,
                                       rescale)

    def scores_and_labels(self, cls_logits: Tensor):
        """Top ``max_per_img`` of the (bs, Q * K) sigmoid scores: a query may give several
        detections of different classes. Returns (bs, k) scores, labels and query indices."""
        num_classes = cls_logits.shape[-1]
        k = min(self.test_cfg.get('max_per_img', 300), cls_logits.shape[1] * num_classes)
        scores, index = cls_logits.sigmoid().flatten(1).topk(k, dim=1)
        return scores, index % num_classes, index // num_classes
