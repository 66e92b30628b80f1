"""Transformer layers whose image attention is multi-scale deformable attention (Zhu et al. 2021).

Shared by Deformable DETR (encoder and decoder) and RT-DETR (decoder). Layers are post-norm; the
positional embedding is added to the attention queries, never to values.
"""
from typing import Optional, Sequence, Union

from torch import Tensor, nn

from detr_plugin.ops import MultiScaleDeformableAttention
from .mlp import FFN
from .multi_scale import MultiScaleLevels
from .multihead_attention import MultiheadAttention


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over the tokens of all levels + FFN."""

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4, ffn_dims: int = 1024, dropout: float = 0.1,
                 act: str = 'relu') -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(embed_dims, num_heads, num_levels, num_points)
        self.ffn = FFN(embed_dims, ffn_dims, dropout, act)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor, reference_points: Tensor,
                levels: MultiScaleLevels) -> Tensor:
        """
        Args:
            x, pos: (bs, N, C) tokens of all levels, N = sum(H_l * W_l).
            reference_points: (bs, N, L, 2) every token's centre, normalized on every level.
            levels: the layout of the tokens (and their padding mask).
        Returns:
            (bs, N, C)
        """
        attn = self.self_attn(x + pos, reference_points, x, levels.spatial_shapes,
                              levels.level_start_index, levels.padding_mask, levels.shapes)
        x = self.norm1(x + self.dropout1(attn))
        return self.norm2(x + self.dropout2(self.ffn(x)))


class DeformableDecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention to the encoder memory, FFN.

    ``num_points`` may differ per level and ``cross_attn_method`` may be 'discrete' (RT-DETRv2);
    see :class:`MultiScaleDeformableAttention`.
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: Union[int, Sequence[int]] = 4, ffn_dims: int = 1024,
                 dropout: float = 0.1, act: str = 'relu',
                 cross_attn_method: str = 'default') -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dims, num_heads, dropout)
        self.cross_attn = MultiScaleDeformableAttention(embed_dims, num_heads, num_levels,
                                                        num_points, method=cross_attn_method)
        self.ffn = FFN(embed_dims, ffn_dims, dropout, act)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.norm3 = nn.LayerNorm(embed_dims)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, query: Tensor, query_pos: Tensor, reference_points: Tensor, memory: Tensor,
                levels: MultiScaleLevels, self_attn_mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            query, query_pos: (bs, Q, C).
            reference_points: (bs, Q, L or 1, 2 or 4) normalized points or cxcywh boxes, already
                scaled to each level's valid region.
            memory: (bs, N, C) encoder output; levels: its layout (and padding mask).
            self_attn_mask: (Q, Q) bool, True where a query may not attend (denoising groups).
        Returns:
            (bs, Q, C)
        """
        q = query + query_pos
        query = self.norm1(query + self.dropout1(self.self_attn(q, q, query, attn_mask=self_attn_mask)))
        attn = self.cross_attn(query + query_pos, reference_points, memory, levels.spatial_shapes,
                               levels.level_start_index, levels.padding_mask, levels.shapes)
        query = self.norm2(query + self.dropout2(attn))
        return self.norm3(query + self.dropout3(self.ffn(query)))
