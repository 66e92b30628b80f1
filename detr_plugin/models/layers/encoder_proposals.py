"""Two-stage Deformable DETR (Zhu et al. 2021, Sec. 4.2): the encoder proposes the decoder queries.

Every encoder token proposes a box: a fixed-size box (``0.05 * 2^l`` of the image on level ``l``)
centred on its pixel, which the encoder's box head refines and its class head scores. The best
``num_queries`` proposals become the decoder's reference boxes, and a sine embedding of each box
becomes its query.
"""
import math
from typing import Tuple

import torch
from torch import Tensor, nn

from .multi_scale import MultiScaleLevels, inverse_sigmoid_boxes, level_boxes


def box_sine_embedding(boxes: Tensor, num_feats: int, temperature: float = 10000.,
                       scale: float = 2 * math.pi) -> Tensor:
    """Sine embedding of every coordinate of a box, as DETR's positional encoding of a pixel.

    Args:
        boxes: (bs, Q, 4) cxcywh in [0, 1].
        num_feats: features per coordinate (sin and cos interleaved).

    Returns:
        (bs, Q, 4 * num_feats): [cx features, cy features, w features, h features].
    """
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature**(2 * (dim_t // 2) / num_feats)
    angles = boxes[..., None] * scale / dim_t  # (bs, Q, 4, num_feats)
    embedding = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), -1)
    return embedding.flatten(2)


class EncoderProposals(nn.Module):
    """The layers of the two-stage variant outside the heads: encoder output -> proposal features,
    and proposal box -> decoder query.

    Args:
        embed_dims: width C of the transformer.
    """

    def __init__(self, embed_dims: int = 256) -> None:
        super().__init__()
        if embed_dims % 2:
            raise ValueError(f'embed_dims must be even, got {embed_dims}')
        self.embed_dims = embed_dims
        self.memory_proj = nn.Linear(embed_dims, embed_dims)
        self.memory_norm = nn.LayerNorm(embed_dims)
        # a box's 4 coordinates x C/2 sine features -> query_pos and query, C each
        self.query_proj = nn.Linear(2 * embed_dims, 2 * embed_dims)
        self.query_norm = nn.LayerNorm(2 * embed_dims)

    def forward(self, memory: Tensor, levels: MultiScaleLevels) -> Tuple[Tensor, Tensor]:
        """Proposal features and boxes of every encoder token.

        Args:
            memory: (bs, N, C) encoder output.
            levels: layout of ``memory``.

        Returns:
            (bs, N, C) features for the encoder's class and box heads, and (bs, N, 4) proposal
            boxes cxcywh in inverse-sigmoid space (float32 whatever the memory's dtype: they
            become the decoder's reference boxes), ``+inf`` where no proposal may come from:
            padding, and boxes reaching outside (0.01, 0.99). The features of those are computed
            from a zeroed memory.
        """
        valid_sizes = (levels.valid_ratios * levels.level_sizes()).round()  # (bs, L, 2) pixels
        # centres normalized by the image's valid size: padding pixels give centres beyond 1
        boxes = level_boxes(levels.shapes, valid_sizes, base_size=0.05)  # (bs, N, 4)
        boxes = inverse_sigmoid_boxes(boxes, eps=0.01, invalid=levels.padding_mask)
        memory = memory.masked_fill(boxes[..., :1].isinf(), 0.0)
        return self.memory_norm(self.memory_proj(memory)), boxes

    def queries(self, boxes_unact: Tensor) -> Tuple[Tensor, Tensor]:
        """boxes_unact: (bs, Q, 4) selected boxes in inverse-sigmoid space.
        Returns query_pos and query, (bs, Q, C) each."""
        embedding = box_sine_embedding(boxes_unact.sigmoid(), self.embed_dims // 2)
        embedding = self.query_norm(self.query_proj(embedding.to(self.query_proj.weight.dtype)))
        return embedding.split(self.embed_dims, -1)
