"""D-FINE's head: fine-grained distribution refinement (FDR) of box edges, the localization quality
estimator (LQE), and the loss with GO-LSD self-distillation (Peng et al., ICLR 2025)."""
from typing import NamedTuple, Optional

import torch
from mmdet.models.layers import inverse_sigmoid
from torch import Tensor, nn

from detr_plugin.registry import MODELS
from ..layers import MLP
from ..layers.box_distribution import (distances_to_boxes, distribution_to_distances,
                                       weighting_function)
from ..layers.predictions import LayerPrediction
from .rtdetr_head import RTDETRHead


class RefinementState(NamedTuple):
    """What FDR carries from one decoder layer to the next (bs images, Q queries, R = reg_max)."""
    corners: Tensor            # (bs, Q, 4 * (R + 1)) the edge logits so far, with gradient
                               # (a zero scalar before layer 0)
    query: Tensor              # (bs, Q, C) the previous layer's output, detached (zero before 0)
    initial_reference: Tensor  # (bs, Q, 4) the pre-box, detached: every layer's edges are
                               # offsets from it
    weights: Tensor            # (R + 1,) the bins' offsets W(n)


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

    Args: as :class:`RTDETRHead`, and
        reg_max: bins per edge minus one.
        reg_scale: curvature of W(n) and the unit of edge offsets (size / reg_scale).
        lqe_topk / lqe_dims: probabilities per edge the LQE reads / its hidden width.
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
                 **kwargs) -> None:
        self.reg_max = reg_max
        self.lqe_topk = lqe_topk
        self.lqe_dims = lqe_dims
        self.initial_reg_scale = reg_scale
        super().__init__(num_classes, embed_dims, num_pred_layers, eval_idx, query_select_method,
                         **kwargs)

    def _init_layers(self) -> None:
        super()._init_layers()  # class heads (prior 0.01), encoder heads
        c, bins = self.embed_dims, 4 * (self.reg_max + 1)
        self.reg_branches = nn.ModuleList(MLP(c, c, bins, 3) for _ in range(self.num_pred_layers))
        self.pre_reg_branch = MLP(c, c, 4, 3)
        self.lqe_branches = nn.ModuleList(MLP(4 * (self.lqe_topk + 1), self.lqe_dims, 1, 2)
                                          for _ in range(self.num_pred_layers))
        # distributions start uniform (every layer's box = its initial reference); LQE scores 0
        for mlp in (*self.reg_branches, self.pre_reg_branch, *self.lqe_branches):
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)
        self.up = nn.Parameter(torch.tensor([0.5]), requires_grad=False)
        self.reg_scale = nn.Parameter(torch.tensor([float(self.initial_reg_scale)]),
                                      requires_grad=False)

    # ------------------------------------------------------------ per layer
    def predict_initial_box(self, query: Tensor, reference: Tensor) -> LayerPrediction:
        """The pre-box from layer 0's output query (bs, Q, C) around the reference it sampled
        (bs, Q, 4): ``sigmoid(delta + inverse_sigmoid(reference))``, with layer 0's class logits
        (no LQE) in training. Its ``carry`` starts the refinement."""
        boxes = (self.pre_reg_branch(query) + inverse_sigmoid(reference)).sigmoid()
        logits = self.cls_branches[0](query) if self.training else None
        zero = query.new_zeros(())
        state = RefinementState(zero, zero, boxes.detach(),
                                weighting_function(self.reg_max, self.up, self.reg_scale))
        return LayerPrediction(logits, boxes, boxes.detach(), carry=state)

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
        corners = self.reg_branches[index](query + state.query) + state.corners
        distances = distribution_to_distances(corners, state.weights)
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
