"""The DETR transformer (Carion et al. 2020, Fig. 10): encoder over image tokens, decoder over queries.

The positional encoding is added to queries and keys at every layer, never to values. Layers are
post-norm by default (as in the paper) and pre-norm with ``pre_norm=True``.
"""
from typing import Optional

import torch
from torch import Tensor, nn

from detr_plugin.registry import MODELS
from .mlp import FFN
from .multihead_attention import MultiheadAttention


class DetrEncoderLayer(nn.Module):
    """Self-attention over image tokens + FFN."""

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, ffn_dims: int = 2048,
                 dropout: float = 0.1, act: str = 'relu', pre_norm: bool = False) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dims, num_heads, dropout)
        self.ffn = FFN(embed_dims, ffn_dims, dropout, act)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, pos: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
        """x, pos: (bs, N, C); padding_mask: (bs, N) True on padding, or None. Returns (bs, N, C)."""
        if self.pre_norm:
            h = self.norm1(x)
            q = h + pos
            x = x + self.dropout1(self.self_attn(q, q, h, key_padding_mask=padding_mask))
            return x + self.dropout2(self.ffn(self.norm2(x)))
        q = x + pos
        x = self.norm1(x + self.dropout1(self.self_attn(q, q, x, key_padding_mask=padding_mask)))
        return self.norm2(x + self.dropout2(self.ffn(x)))


class DetrDecoderLayer(nn.Module):
    """Self-attention among queries, cross-attention to the encoder memory, FFN."""

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, ffn_dims: int = 2048,
                 dropout: float = 0.1, act: str = 'relu', pre_norm: bool = False) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dims, num_heads, dropout)
        self.cross_attn = MultiheadAttention(embed_dims, num_heads, dropout)
        self.ffn = FFN(embed_dims, ffn_dims, dropout, act)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.norm3 = nn.LayerNorm(embed_dims)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, query: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                memory_padding_mask: Optional[Tensor]) -> Tensor:
        """query, query_pos: (bs, Q, C); memory, memory_pos: (bs, N, C);
        memory_padding_mask: (bs, N) or None. Returns (bs, Q, C)."""
        key = memory + memory_pos
        if self.pre_norm:
            h = self.norm1(query)
            q = h + query_pos
            query = query + self.dropout1(self.self_attn(q, q, h))
            h = self.norm2(query)
            query = query + self.dropout2(self.cross_attn(
                h + query_pos, key, memory, key_padding_mask=memory_padding_mask))
            return query + self.dropout3(self.ffn(self.norm3(query)))
        q = query + query_pos
        query = self.norm1(query + self.dropout1(self.self_attn(q, q, query)))
        query = self.norm2(query + self.dropout2(self.cross_attn(
            query + query_pos, key, memory, key_padding_mask=memory_padding_mask)))
        return self.norm3(query + self.dropout3(self.ffn(query)))


@MODELS.register_module()
class DetrTransformerEncoder(nn.Module):
    """A stack of ``num_layers`` encoder layers; pre-norm stacks end with a LayerNorm."""

    def __init__(self, num_layers: int = 6, layer_cfg: Optional[dict] = None) -> None:
        super().__init__()
        layer_cfg = layer_cfg or {}
        self.layers = nn.ModuleList(DetrEncoderLayer(**layer_cfg) for _ in range(num_layers))
        embed_dims = self.layers[0].norm1.normalized_shape[0]
        self.norm = nn.LayerNorm(embed_dims) if layer_cfg.get('pre_norm', False) else nn.Identity()

    def forward(self, x: Tensor, pos: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
        """x, pos: (bs, N, C) flattened image tokens; padding_mask: (bs, N). Returns (bs, N, C)."""
        for layer in self.layers:
            x = layer(x, pos, padding_mask)
        return self.norm(x)


@MODELS.register_module()
class DetrTransformerDecoder(nn.Module):
    """A stack of decoder layers whose every output, after one shared LayerNorm, is returned
    (the intermediate outputs feed the auxiliary losses)."""

    def __init__(self, num_layers: int = 6, layer_cfg: Optional[dict] = None) -> None:
        super().__init__()
        layer_cfg = layer_cfg or {}
        self.layers = nn.ModuleList(DetrDecoderLayer(**layer_cfg) for _ in range(num_layers))
        self.norm = nn.LayerNorm(self.layers[0].norm1.normalized_shape[0])

    def forward(self, query: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                memory_padding_mask: Optional[Tensor]) -> Tensor:
        """query, query_pos: (bs, Q, C); memory, memory_pos: (bs, N, C).
        Returns the normalized output of every layer, (num_layers, bs, Q, C)."""
        outputs = []
        for layer in self.layers:
            query = layer(query, query_pos, memory, memory_pos, memory_padding_mask)
            outputs.append(self.norm(query))
        return torch.stack(outputs)
