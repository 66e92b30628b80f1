"""D-FINE's head: fine-grained distribution refinement (FDR) of box edges, the localization quality
estimator (LQE), and the loss with GO-LSD self-distillation (Peng et al., ICLR 2025)."""
import math
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from mmdet.models.layers import inverse_sigmoid
from mmdet.utils import reduce_mean
from torch import Tensor, nn

from detr_plugin.registry import MODELS, build_in_scope
from ..layers import MLP
from ..layers.box_distribution import (boxes_to_bins, distances_to_boxes,
                                       distribution_to_distances, weighting_function)
from ..layers.predictions import DetectionOutputs, LayerPrediction
from ..losses.decoupled_distillation import DistillationBalance, distillation_balance
from ..task_modules import Matches, box_overlaps, cxcywh_to_xyxy
from ..task_modules.matching_union import matching_union
from .detr_head import GroundTruth, at_least_float32
from .rtdetr_head import RTDETRHead


class RefinementState(NamedTuple):
    """What FDR carries from one decoder layer to the next (bs images, Q queries, R = reg_max)."""
    corners: Optional[Tensor]  # (bs, Q, 4 * (R + 1)) the edge logits so far, with gradient
                               # (None before layer 0)
    query: Optional[Tensor]    # (bs, Q, C) the previous layer's output, detached (None before 0)
    initial_reference: Tensor  # (bs, Q, 4) the pre-box, detached: every layer's edges are
                               # offsets from it
    weights: Tensor            # (R + 1,) the bins' offsets W(n)


class BinWeightsKey(NamedTuple):
    """What the head's W(n) buffer was computed from (:meth:`DFINEHead.bin_weights`)."""
    params: Tuple[Tensor, Tensor]  # up, reg_scale: the parameter objects
    state: tuple                   # their data pointers, versions, dtypes, devices; inference mode


@MODELS.register_module()
class DFINEHead(RTDETRHead):
    """RT-DETR's head with box edges predicted as distributions and refined layer by layer.

    After decoder layer 0 a box head regresses a *pre-box* around the layer's reference (RT-DETR's
    rule, :meth:`predict_initial_box`); it is supervised on its own and, detached, is the initial
    reference of every layer. Layer i's box head predicts, per box edge, logits over
    ``reg_max + 1`` bins, added to the previous layer's logits (residual refinement, with
    gradient); the edge's offset from the initial reference is the expectation of the
    non-uniform bin offsets W(n) (:mod:`..layers.box_distribution`, shaped by ``up`` and
    ``reg_scale``, both frozen as in the original). The box head's input is the layer's output
    plus the previous layer's output, detached. The class logits get the LQE's score: an MLP of
    the top-4 probabilities of each edge's distribution and their mean.

    The loss (:meth:`loss`) is the original criterion's: every layer, the pre-box and the
    encoder's top-k are Hungarian-matched on their own for the classification loss; the union of
    all those matchings (GO-LSD, :func:`matching_union`) is the matching of every box loss (L1,
    GIoU) and of the layers' localization losses: FGL (each edge's distribution against its gt
    offset split between two bins) and DDF (earlier layers' distributions distilled from the last
    layer's). Denoising queries (and their pre-box) get the same terms on their known gts.
    Names: ``loss_{vfl,bbox,giou,fgl}`` for the last layer, ``d{i}.loss_*`` (with ``loss_ddf``)
    for the others, ``pre_loss_*`` / ``enc_loss_*`` (class and box terms) for the pre-box and the
    encoder, ``dn_`` for denoising. The last layer has no DDF (it is the teacher).

    Args: as :class:`RTDETRHead`, and
        reg_max: bins per edge minus one.
        reg_scale: curvature of W(n) and the unit of edge offsets (size / reg_scale).
        lqe_topk / lqe_dims: probabilities per edge the LQE reads / its hidden width.
        mlp_act / lqe_act: activation of the box MLPs / of the LQE ('silu' in DEIM).
        loss_fgl / loss_ddf: ``FineGrainedLocalizationLoss`` / ``DecoupledDistillationLoss``.
        loss_cls_name: the classification loss's name (DEIM's MAL: 'loss_mal').
    """

    def __init__(self,
                 num_classes: int,
                 embed_dims: int = 256,
                 num_pred_layers: int = 6,
                 eval_idx: int = -1,
                 query_select_method: str = 'default',
                 reg_max: int = 32,
                 reg_scale: float = 4.0,
                 lqe_topk: int = 4,
                 lqe_dims: int = 64,
                 mlp_act: str = 'relu',
                 lqe_act: str = 'relu',
                 loss_fgl: dict = dict(type='FineGrainedLocalizationLoss', loss_weight=0.15),
                 loss_ddf: dict = dict(type='DecoupledDistillationLoss', temperature=5.0,
                                       loss_weight=1.5),
                 loss_cls_name: str = 'loss_vfl',
                 **kwargs) -> None:
        self.reg_max = reg_max
        self.lqe_topk = lqe_topk
        self.lqe_dims = lqe_dims
        self.mlp_act = mlp_act
        self.lqe_act = lqe_act
        self.initial_reg_scale = reg_scale
        self.loss_cls_name = loss_cls_name
        super().__init__(num_classes, embed_dims, num_pred_layers, eval_idx, query_select_method,
                         **kwargs)
        self.loss_fgl = build_in_scope(MODELS, loss_fgl)
        self.loss_ddf = build_in_scope(MODELS, loss_ddf)

    def _init_layers(self) -> None:
        c, k, bins, act = self.embed_dims, self.num_classes, 4 * (self.reg_max + 1), self.mlp_act
        layers = range(self.num_pred_layers)
        self.cls_branches = nn.ModuleList(nn.Linear(c, k) for _ in layers)
        self.reg_branches = nn.ModuleList(MLP(c, c, bins, 3, act=act) for _ in layers)
        self.pre_reg_branch = MLP(c, c, 4, 3, act=act)
        self.lqe_branches = nn.ModuleList(
            MLP(4 * (self.lqe_topk + 1), self.lqe_dims, 1, 2, act=self.lqe_act) for _ in layers)
        self.enc_cls_branch = nn.Linear(c, 1 if self.class_agnostic_encoder else k)
        self.enc_reg_branch = MLP(c, c, 4, 3, act=act)
        prior_bias = -math.log((1 - 0.01) / 0.01)  # every class starts at probability 0.01
        for cls in (*self.cls_branches, self.enc_cls_branch):
            nn.init.constant_(cls.bias, prior_bias)
        # boxes start at their references (distributions uniform); LQE scores 0
        for mlp in (*self.reg_branches, self.pre_reg_branch, self.enc_reg_branch,
                    *self.lqe_branches):
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)
        self.up = nn.Parameter(torch.tensor([0.5]), requires_grad=False)
        self.reg_scale = nn.Parameter(torch.tensor([float(self.initial_reg_scale)]),
                                      requires_grad=False)
        # W(n), (reg_max + 1,): a buffer (device-resident, never saved), computed by bin_weights
        self.register_buffer('bin_weight_table', None, persistent=False)
        self._bin_weights_key: Optional[BinWeightsKey] = None

    # ------------------------------------------------------------ per layer
    def predict_initial_box(self, query: Tensor, reference: Tensor) -> LayerPrediction:
        """The pre-box from layer 0's output query (bs, Q, C) around the reference it sampled
        (bs, Q, 4): ``sigmoid(delta + inverse_sigmoid(reference))``, with layer 0's class logits
        (no LQE) in training. Its ``carry`` starts the refinement."""
        boxes = (self.pre_reg_branch(query) + inverse_sigmoid(reference)).sigmoid()
        logits = self.cls_branches[0](query) if self.training else None
        state = RefinementState(None, None, boxes.detach(), self.bin_weights())
        return LayerPrediction(logits, boxes, boxes.detach(), carry=state)

    def bin_weights(self) -> Tensor:
        """W(n), (reg_max + 1,), of the current ``up`` and ``reg_scale``.

        Both are frozen, so W is a constant of the model: it is computed again only when one of
        them is replaced, moved, cast or changed in place (``load_state_dict``, ``copy_``: their
        version counters), not at every forward (about 50 one-element ops, each a kernel launch
        on the GPU). Recomputed every time if they are made trainable, and outside inference
        mode after being computed in it (an inference tensor cannot be saved for backward)."""
        params = (self.up, self.reg_scale)
        if any(p.requires_grad for p in params):
            return weighting_function(self.reg_max, self.up, self.reg_scale)
        state = (*((p.data_ptr(), p._version, p.dtype, p.device) for p in params),
                 torch.is_inference_mode_enabled())
        key = self._bin_weights_key
        if (key is None or self.bin_weight_table is None
                or any(a is not b for a, b in zip(key.params, params)) or key.state != state):
            self.bin_weight_table = weighting_function(self.reg_max, self.up, self.reg_scale)
            self._bin_weights_key = BinWeightsKey(params, state)
        return self.bin_weight_table

    def predict_layer(self, index: int, query: Tensor, reference: Tensor,
                      previous: Optional[LayerPrediction]) -> LayerPrediction:
        """Layer ``index``'s edge logits (``extras``, (bs, Q, 4 * (reg_max + 1))) are the previous
        layer's plus its box head's output; its box decodes them around the initial reference
        and, detached, is the next layer's reference. Logits (with the LQE's score) only where
        used: every layer in training, ``eval_idx`` at inference.

        Args:
            query: (bs, Q, C) the layer's output; reference: unused (the edges refine the
                initial reference); previous: layer ``index - 1``'s prediction, for layer 0 the
                pre-box (:meth:`predict_initial_box`).
        """
        if previous is None:
            raise ValueError('DFINEHead.predict_layer needs the previous prediction (for layer 0: '
                             'predict_initial_box), as DFINEDecoder passes it')
        state = previous.carry
        if state.corners is None:  # layer 0: nothing to add
            corners = self.reg_branches[index](query)
        else:
            corners = self.reg_branches[index](query + state.query) + state.corners
        with torch.autocast(query.device.type, enabled=False):  # float32 boxes under AMP
            distances = distribution_to_distances(at_least_float32(corners), state.weights)
        boxes = distances_to_boxes(state.initial_reference, distances, self.reg_scale)
        logits = None
        if self.training or index == self.eval_idx:
            logits = self.cls_branches[index](query) + self.quality(index, corners)
        return LayerPrediction(logits, boxes, boxes.detach(), extras=corners,
                               carry=state._replace(corners=corners, query=query.detach()))

    def quality(self, index: int, corners: Tensor) -> Tensor:
        """LQE of layer ``index``: (bs, Q, 4 * (R + 1)) edge logits -> (bs, Q, 1) score added to
        every class logit, from the top ``lqe_topk`` probabilities of each edge and their mean."""
        prob = corners.unflatten(-1, (4, self.reg_max + 1)).softmax(-1)
        top = prob.topk(self.lqe_topk, dim=-1).values  # (bs, Q, 4, k)
        stats = torch.cat([top, top.mean(-1, keepdim=True)], -1)  # (bs, Q, 4, k + 1)
        return self.lqe_branches[index](stats.flatten(-2))

    # ------------------------------------------------------------------ loss
    def loss(self, outputs: DetectionOutputs, gt: GroundTruth) -> Dict[str, Tensor]:
        """Losses of every decoder layer, the pre-box, the encoder top-k and the denoising
        queries (class docstring), computed in float32 (float64 for a float64 model)."""
        logits, boxes = at_least_float32(outputs.logits), at_least_float32(outputs.boxes)
        corners = at_least_float32(outputs.extras)
        num_layers, bs, num_queries = logits.shape[:3]
        num_boxes = self.num_boxes_across_ranks(gt, like=boxes)
        # layers, then the pre-box, then the encoder: (L + 2, bs, Q, .)
        all_logits = torch.cat([logits, at_least_float32(outputs.pre.logits),
                                at_least_float32(outputs.enc_logits[None])])
        all_boxes = torch.cat([boxes, at_least_float32(outputs.pre.boxes),
                               at_least_float32(outputs.enc_boxes[None])])
        loss_cls, pairs = self.classification_losses(all_logits, all_boxes, gt, num_boxes)
        pred_index, gt_index = self.flat_pairs(matching_union(pairs), num_queries, gt)
        num_union = reduce_mean(torch.full((), float(len(pred_index)), dtype=boxes.dtype,
                                           device=boxes.device)).clamp(min=1.0)
        union = self.repeat_matches(pred_index, gt_index, num_layers + 2, bs * num_queries)
        loss_bbox, loss_iou = self.loss_boxes_per_layer(
            all_boxes, self.matched_boxes(all_boxes, gt, union), union, num_union)
        reference = outputs.pre.boxes[0].detach()
        balance = distillation_balance(self.matched_mask(pred_index, bs, num_queries))
        loss_fgl, loss_ddf = self.local_losses(corners, logits, boxes, reference, gt, pred_index,
                                               gt_index, num_union, balance)
        losses = self.named(dict(cls=loss_cls, bbox=loss_bbox, iou=loss_iou), loss_fgl, loss_ddf)
        if outputs.denoising is not None:
            losses.update(self.denoising_losses(outputs, gt, num_boxes, balance))
        return losses

    def classification_losses(self, logits: Tensor, boxes: Tensor, gt: GroundTruth,
                              num_boxes: Tensor) -> Tuple[Tensor, List]:
        """(L + 2,) classification losses of the layers, pre-box and encoder, each matched on its
        own, and those matchings' pairs (``Matches.pairs`` of every row). A class-agnostic
        encoder is matched against its one class."""
        if not self.class_agnostic_encoder:
            matches = self.match(logits, boxes, gt)
            ious = self.matched_ious(boxes, gt, matches)
            return self.loss_cls_per_layer(logits, gt, matches, ious, num_boxes), matches.pairs
        agnostic = gt.class_agnostic()
        matches, enc_matches = self.match_sets((logits[:-1], boxes[:-1], gt),
                                               (logits[-1:], boxes[-1:], agnostic))
        ious = self.matched_ious(boxes[:-1], gt, matches)
        enc_ious = self.matched_ious(boxes[-1:], agnostic, enc_matches)
        loss = torch.cat([
            self.loss_cls_per_layer(logits[:-1], gt, matches, ious, num_boxes),
            self.loss_cls_per_layer(logits[-1:], agnostic, enc_matches, enc_ious, num_boxes)])
        return loss, matches.pairs + enc_matches.pairs

    def denoising_losses(self, outputs: DetectionOutputs, gt: GroundTruth, num_boxes: Tensor,
                         balance: DistillationBalance) -> Dict[str, Tensor]:
        """Every term of the denoising queries of every layer and of their pre-box, each matched
        to the gt it was made from; the distillation balance is the matching queries' (as the
        original reuses it)."""
        dn, pre = outputs.denoising, outputs.pre.denoising
        num_layers = dn.logits.shape[0]
        logits, boxes = at_least_float32(dn.logits), at_least_float32(dn.boxes)
        all_logits = torch.cat([logits, at_least_float32(pre.logits)])
        all_boxes = torch.cat([boxes, at_least_float32(pre.boxes)])
        num_dn_boxes = num_boxes * dn.groups.num_groups
        matches = self.denoising_matches(dn.groups, num_layers + 1)
        per_layer = self.losses_per_layer(all_logits, all_boxes, gt, matches, num_dn_boxes)
        loss_fgl, loss_ddf = self.local_losses(
            at_least_float32(dn.extras), logits, boxes, pre.boxes[0].detach(), gt,
            dn.groups.pred_index, dn.groups.gt_index, num_dn_boxes, balance)
        named = self.named(dict(cls=per_layer['loss_cls'], bbox=per_layer['loss_bbox'],
                                iou=per_layer['loss_iou']), loss_fgl, loss_ddf, prefix='dn_')
        return named

    def local_losses(self, corners: Tensor, logits: Tensor, boxes: Tensor, reference: Tensor,
                     gt: GroundTruth, pred_index: Tensor, gt_index: Tensor, num_matched: Tensor,
                     balance: DistillationBalance) -> Tuple[Tensor, Tensor]:
        """(L,) FGL of each layer and (L - 1,) DDF of each layer but the last (the teacher; the
        original's term for it is 0 by construction) on the matched pairs.

        Args:
            corners: (L, bs, Q, 4 * (R + 1)); logits: (L, bs, Q, K); boxes: (L, bs, Q, 4).
            reference: (bs, Q, 4) the initial reference the edges are offsets from.
            pred_index / gt_index: (M,) matched queries in the flattened (bs * Q) grid and their
                gts in the batch's concatenated gts.
            num_matched: FGL's normaliser.
            balance: DDF's mixing weights of matched and unmatched queries.
        """
        target = cxcywh_to_xyxy(gt.all_boxes[gt_index])  # (M, 4)
        bins = boxes_to_bins(reference.flatten(0, 1)[pred_index], target, self.bin_weights(),
                             self.reg_scale)
        matched = cxcywh_to_xyxy(boxes.detach().flatten(1, 2)[:, pred_index])  # (L, M, 4)
        ious = box_overlaps(matched, target, is_aligned=True)  # (L, M), every layer at once
        fgl = self.loss_fgl(corners.flatten(1, 2)[:, pred_index], bins, ious,
                            avg_factor=num_matched)
        ddf = self.loss_ddf(corners[:-1], corners[-1], logits[-1], pred_index, ious[:-1], balance)
        return fgl, ddf

    def named(self, terms: Dict[str, Tensor], loss_fgl: Tensor, loss_ddf: Tensor,
              prefix: str = '') -> Dict[str, Tensor]:
        """Names (L + 2,) class / box terms (layers, pre-box, then the encoder unless denoising:
        L + 1), (L,) FGL and (L - 1,) DDF terms as the class docstring says."""
        num_layers = loss_fgl.shape[0]
        names = dict(cls=self.loss_cls_name, bbox='loss_bbox', iou='loss_giou')
        losses = self.name_losses(**{f'{prefix}{names[k]}': v[:num_layers]
                                     for k, v in terms.items()},
                                  **{f'{prefix}loss_fgl': loss_fgl})
        losses.update({f'd{i}.{prefix}loss_ddf': value for i, value in enumerate(loss_ddf)})
        for k, v in terms.items():
            losses[f'pre_{prefix}{names[k]}'] = v[num_layers]
            if not prefix:
                losses[f'enc_{names[k]}'] = v[num_layers + 1]
        return losses

    @staticmethod
    def flat_pairs(pairs: List[Tuple[Tensor, Tensor]], num_queries: int,
                   gt: GroundTruth) -> Tuple[Tensor, Tensor]:
        """Per-image (query_idx, gt_idx) -> (M,) indices into the flattened (bs * Q) grid and
        into the batch's concatenated gts."""
        starts = torch.tensor([0] + [len(labels) for labels in gt.labels[:-1]]).cumsum(0)
        pred = [b * num_queries + q for b, (q, _) in enumerate(pairs)]
        target = [int(start) + g for start, (_, g) in zip(starts, pairs)]
        return torch.cat(pred).long(), torch.cat(target).long()

    @staticmethod
    def repeat_matches(pred_index: Tensor, gt_index: Tensor, num_layers: int,
                       per_layer: int) -> Matches:
        """The same pairs on each of ``num_layers`` layers of ``per_layer`` queries."""
        offsets = torch.arange(num_layers, device=pred_index.device) * per_layer
        return Matches(pairs=[], pred_index=(offsets[:, None] + pred_index[None]).flatten(),
                       gt_index=gt_index.repeat(num_layers))

    @staticmethod
    def matched_mask(pred_index: Tensor, bs: int, num_queries: int) -> Tensor:
        """(bs, Q) bool, True at the matched queries."""
        mask = torch.zeros(bs * num_queries, dtype=torch.bool, device=pred_index.device)
        mask.index_fill_(0, pred_index, True)  # a scalar argument, not a host tensor to copy
        return mask.view(bs, num_queries)

