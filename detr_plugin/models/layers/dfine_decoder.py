"""D-FINE's decoder side (Peng et al., ICLR 2025): RT-DETR's query selection and decoder loop with
gated cross-attention layers, and a head that refines box-edge distributions.

What differs from :class:`RTDETRDecoder`: a level already ``embed_dims`` wide enters unprojected;
the query position embedding is clamped to [-10, 10]; the layers' deformable attention samples the
memory itself (no value or output projection) and is fused with the query by a learned gate
(:class:`GatedFusion`) instead of a residual sum. After layer 0 the head makes a first box from the
query (its *pre-box*, :meth:`DFINEHead.predict_initial_box`); every layer's prediction then refines
edge distributions around that box (:meth:`DFINEHead.predict_layer`).
"""
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from detr_plugin.ops import MultiScaleDeformableAttention
from detr_plugin.registry import MODELS
from .denoising import DenoisingGroups
from .mlp import FFN, MLP
from .multi_scale import MultiScaleLevels
from .multihead_attention import MultiheadAttention
from .predictions import DetectionOutputs, LayerPrediction
from .rtdetr_decoder import RTDETRDecoder

# largest finite float16: the layer output is clamped to it before the last norm, as the original
FP16_MAX = 65504.0


class GatedFusion(nn.Module):
    """``norm(g1 * x1 + g2 * x2)`` with per-channel gates ``(g1, g2) = sigmoid(W [x1, x2] + b)``;
    W = 0 and b = 0 at initialization (both gates 0.5)."""

    def __init__(self, embed_dims: int) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * embed_dims, 2 * embed_dims)
        self.norm = nn.LayerNorm(embed_dims)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        """x1, x2: (..., C) -> (..., C)."""
        gate1, gate2 = self.gate(torch.cat([x1, x2], -1)).sigmoid().chunk(2, dim=-1)
        return self.norm(gate1 * x1 + gate2 * x2)


class DFINEDecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention to the memory fused by a gate, FFN.

    Post-norm like :class:`DeformableDecoderLayer`; the cross-attention has no value or output
    projection (the memory is sampled as it is, heads concatenated).
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 3,
                 num_points: Union[int, Sequence[int]] = 4, ffn_dims: int = 1024,
                 dropout: float = 0.0, act: str = 'relu',
                 cross_attn_method: str = 'default') -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dims, num_heads, dropout)
        self.cross_attn = MultiScaleDeformableAttention(embed_dims, num_heads, num_levels,
                                                        num_points, method=cross_attn_method,
                                                        projections=False)
        self.gateway = GatedFusion(embed_dims)
        self.ffn = FFN(embed_dims, ffn_dims, dropout, act)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.norm3 = nn.LayerNorm(embed_dims)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout4 = nn.Dropout(dropout)
        for linear in (self.ffn.linear1, self.ffn.linear2):
            nn.init.xavier_uniform_(linear.weight)

    def forward(self, query: Tensor, query_pos: Tensor, reference_points: Tensor, memory: Tensor,
                levels: MultiScaleLevels, self_attn_mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            query, query_pos: (bs, Q, C).
            reference_points: (bs, Q, 1, 4) cxcywh boxes in [0, 1].
            memory: (bs, N, C) encoder output, sampled as the value; levels: its layout.
            self_attn_mask: (Q, Q) bool, True where a query may not attend (denoising groups).
        Returns:
            (bs, Q, C)
        """
        q = query + query_pos
        attn = self.self_attn(q, q, query, attn_mask=self_attn_mask)
        query = self.norm1(query + self.dropout1(attn))
        attn = self.cross_attn(query + query_pos, reference_points, memory, levels.spatial_shapes,
                               levels.level_start_index, levels.padding_mask, levels.shapes)
        query = self.gateway(query, self.dropout2(attn))
        query = query + self.dropout4(self.ffn(query))
        return self.norm3(query.clamp(-FP16_MAX, FP16_MAX))


@MODELS.register_module()
class DFINEDecoder(RTDETRDecoder):
    """Input projection, query selection and the gated decoder layers of D-FINE.

    Args: as :class:`RTDETRDecoder`; ``layer_cfg`` are :class:`DFINEDecoderLayer` arguments
    (e.g. ``num_points=[3, 6, 3]``), and

        layer_scale: the original's width factor of the layers after ``eval_idx``; every released
            D-FINE and DEIM config uses 1 (no wider layers), the only value supported.
        mlp_act: activation of the query position MLP ('silu' in DEIM).
    """

    def __init__(self, *args, layer_scale: float = 1, mlp_act: str = 'relu', **kwargs) -> None:
        if layer_scale != 1:
            raise ValueError(f'DFINEDecoder: layer_scale={layer_scale} is not supported (every '
                             f'released D-FINE / DEIM config uses 1)')
        self.mlp_act = mlp_act
        super().__init__(*args, **kwargs)

    def make_input_proj(self, in_channels: int) -> nn.Module:
        """A level already ``embed_dims`` wide enters as it is; others: 1x1 conv (xavier) + BN."""
        if in_channels == self.embed_dims:
            return nn.Identity()
        conv = nn.Conv2d(in_channels, self.embed_dims, 1, bias=False)
        nn.init.xavier_uniform_(conv.weight)
        return nn.Sequential(OrderedDict(conv=conv, norm=nn.BatchNorm2d(self.embed_dims)))

    def make_layer(self, layer_cfg: dict) -> nn.Module:
        return DFINEDecoderLayer(self.embed_dims, **layer_cfg)

    def make_query_pos_head(self) -> MLP:
        return MLP(4, 2 * self.embed_dims, self.embed_dims, num_layers=2, act=self.mlp_act)

    def forward(self, feats: Sequence[Tensor], head,
                denoising: Optional[DenoisingGroups] = None) -> DetectionOutputs:
        """As :meth:`RTDETRDecoder.forward`, with the head's pre-box prediction in
        ``outputs.pre`` (training).

        Args:
            head: a :class:`DFINEHead` (``predict_encoder``, ``predict_initial_box``,
                ``predict_layer``).
        """
        inputs = self.decoder_inputs(feats, head, denoising)
        pre, predictions = self.refine(inputs.query, inputs.reference, inputs.memory,
                                       inputs.levels, head, inputs.attn_mask)
        outputs = DetectionOutputs.from_layers(predictions, denoising)
        return outputs._replace(
            enc_logits=inputs.selection.enc_logits, enc_boxes=inputs.selection.enc_boxes,
            pre=None if pre.logits is None else DetectionOutputs.from_layers([pre], denoising))

    def refine(self, query: Tensor, reference: Tensor, memory: Tensor, levels: MultiScaleLevels,
               head, attn_mask: Optional[Tensor] = None
               ) -> Tuple[LayerPrediction, List[LayerPrediction]]:
        """Runs the decoder layers the head asks for.

        Args:
            query: (bs, Q', C) initial content queries; reference: (bs, Q', 4) their boxes,
                cxcywh in [0, 1], no gradient; attn_mask: (Q', Q') bool, True = blocked.

        Returns:
            The pre-box prediction (from layer 0's output) and the prediction of every layer run.
        """
        predictions: List[LayerPrediction] = []
        for i, layer in enumerate(self.layers[:head.num_layers_to_run(self.num_layers)]):
            query_pos = self.query_pos_head(reference).clamp(-10, 10)
            query = layer(query, query_pos, reference[:, :, None], memory, levels, attn_mask)
            if i == 0:
                pre = head.predict_initial_box(query, reference)
            previous = head.predict_layer(i, query, reference, predictions[-1] if i else pre)
            predictions.append(previous)
            reference = previous.next_reference
        return pre, predictions
