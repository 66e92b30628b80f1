"""Two-stage Deformable DETR (Zhu et al. 2021, Sec. 4.2): the encoder proposes the decoder queries.

Every encoder token proposes a box: a fixed-size box (``0.05 * 2^l`` of the image on level ``l``)
centred on its pixel, which the encoder's box head refines and its class head scores. The best
``num_queries`` proposals become the decoder's reference boxes, and a sine embedding of each box
becomes its query.
"""
import math
from typing import Sequence, Tuple

import torch
from torch import Tensor, nn

from .deformable_detr_transformer import MultiScaleLevels


def proposal_boxes(shapes: Sequence[Tuple[int, int]], valid_sizes: Tensor,
                   base_size: float = 0.05) -> Tensor:
    """One box per pixel of every level, normalized by the image's valid size on that level.

    Args:
        shapes: (H_l, W_l) of every level.
        valid_sizes: (bs, L, 2) as (valid width, valid height) in pixels of each level.
        base_size: width and height of the boxes of level 0; they double from level to level.

    Returns:
        (bs, N, 4) cxcywh: pixel (i, j) of level l gives
        ``((j + 0.5) / valid_w_l, (i + 0.5) / valid_h_l, base_size * 2^l, base_size * 2^l)``.
        Padding pixels give centres beyond 1.
    """
    boxes = []
    for lvl, (h, w) in enumerate(shapes):
        ys = torch.arange(h, dtype=torch.float32, device=valid_sizes.device) + 0.5
        xs = torch.arange(w, dtype=torch.float32, device=valid_sizes.device) + 0.5
        y, x = torch.meshgrid(ys, xs, indexing='ij')
        centres = torch.stack((x, y), -1).reshape(1, h * w, 2) / valid_sizes[:, None, lvl]
        sizes = torch.full_like(centres, base_size * 2.0**lvl)
        boxes.append(torch.cat((centres, sizes), -1))  # (bs, h*w, 4)
    return torch.cat(boxes, 1)


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
        sizes = levels.spatial_shapes.flip(-1).to(levels.valid_ratios)  # (L, 2) as (W_l, H_l)
        valid_sizes = (levels.valid_ratios * sizes).round()  # (bs, L, 2) whole pixels
        boxes = proposal_boxes(levels.shapes, valid_sizes)  # (bs, N, 4)
        invalid = ~((boxes > 0.01) & (boxes < 0.99)).all(-1)  # (bs, N)
        if levels.padding_mask is not None:
            invalid = invalid | levels.padding_mask
        boxes = torch.log(boxes / (1 - boxes)).masked_fill(invalid[..., None], float('inf'))
        memory = memory.masked_fill(invalid[..., None], 0.0)
        return self.memory_norm(self.memory_proj(memory)), boxes

    def queries(self, boxes_unact: Tensor) -> Tuple[Tensor, Tensor]:
        """boxes_unact: (bs, Q, 4) selected boxes in inverse-sigmoid space.
        Returns query_pos and query, (bs, Q, C) each."""
        embedding = box_sine_embedding(boxes_unact.sigmoid(), self.embed_dims // 2)
        embedding = self.query_norm(self.query_proj(embedding.to(self.query_proj.weight.dtype)))
        return embedding.split(self.embed_dims, -1)
