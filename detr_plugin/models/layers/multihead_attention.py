"""Multi-head attention on ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU)."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention with ``nn.MultiheadAttention``'s parameter layout.

    The packed ``in_proj_weight`` (3C, C) / ``in_proj_bias`` (3C,) and ``out_proj`` match PyTorch's
    module, so the original DETR checkpoints load one to one. When ``key is query`` (self-attention
    with the same positional sum) the query and key projections run as one matmul.

    Masks follow ``nn.MultiheadAttention``: True marks what may *not* be attended.
    """

    def __init__(self, embed_dims: int, num_heads: int, dropout: float = 0.) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dims, embed_dims))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dims))
        self.out_proj = nn.Linear(embed_dims, embed_dims)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            query: (bs, Lq, C). key: (bs, Lk, C). value: (bs, Lk, C).
            key_padding_mask: (bs, Lk) bool, True on padded keys.
            attn_mask: (Lq, Lk) or (bs, Lq, Lk) bool, True where attention is blocked.
        Returns:
            (bs, Lq, C)
        """
        c = self.embed_dims
        w, b = self.in_proj_weight, self.in_proj_bias
        if key is query:
            q, k = F.linear(query, w[:2 * c], b[:2 * c]).chunk(2, dim=-1)
        else:
            q = F.linear(query, w[:c], b[:c])
            k = F.linear(key, w[c:2 * c], b[c:2 * c])
        v = F.linear(value, w[2 * c:], b[2 * c:])
        q, k, v = (self._split_heads(t) for t in (q, k, v))  # (bs, heads, L, C / heads)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=self._allowed(key_padding_mask, attn_mask),
            dropout_p=self.dropout if self.training else 0.)
        out = out.transpose(1, 2).flatten(2)  # (bs, Lq, C)
        return self.out_proj(out)

    def _split_heads(self, x: Tensor) -> Tensor:
        bs, length, _ = x.shape
        return x.view(bs, length, self.num_heads, -1).transpose(1, 2)

    @staticmethod
    def _allowed(key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor]) -> Optional[Tensor]:
        """Combines both blocking masks into SDPA's convention (True = may attend), (bs|1, 1, Lq|1, Lk)."""
        allowed = None
        if key_padding_mask is not None:
            allowed = ~key_padding_mask[:, None, None, :]
        if attn_mask is not None:
            pair = ~(attn_mask[None, None] if attn_mask.dim() == 2 else attn_mask[:, None])
            allowed = pair if allowed is None else allowed & pair
        return allowed

    def extra_repr(self) -> str:
        return f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, dropout={self.dropout}'
