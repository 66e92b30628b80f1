"""Encoder and decoder stacks of Deformable DETR (Zhu et al. 2021, Sec. 4.1 and A.4).

The feature levels are flattened into one token sequence; :class:`MultiScaleLevels` carries what
multi-scale deformable attention needs to read it back (shapes, start offsets, padding, and the
fraction of every level that holds the image). Reference points live in the image's valid region,
normalized to [0, 1]; before attention they are scaled by each level's valid ratio, so that they
address the padded level maps the attention samples from.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from mmdet.models.layers.transformer.utils import inverse_sigmoid
from torch import Tensor, nn

from detr_plugin.ops import level_index_tensors
from detr_plugin.registry import MODELS
from .deformable_transformer import DeformableDecoderLayer, DeformableEncoderLayer


class MultiScaleLevels(NamedTuple):
    """Layout of the flattened feature levels of a batch (L levels, N = sum(H_l * W_l) tokens).

    The level sizes are kept on the host too, so that nothing at inference reads them back from
    the device (no synchronisation: the model can be captured in a CUDA graph).
    """
    shapes: Tuple[Tuple[int, int], ...]  # (H_l, W_l) of every level, on the host
    spatial_shapes: Tensor          # (L, 2) long, the same on the device
    level_start_index: Tensor       # (L,) long, first token of every level
    valid_ratios: Tensor            # (bs, L, 2) as (w, h): valid width / W_l, valid height / H_l
    padding_mask: Optional[Tensor]  # (bs, N) True on padding; None when no image is padded

    @classmethod
    def from_shapes(cls, shapes: Sequence[Tuple[int, int]], valid_ratios: Tensor,
                    padding_mask: Optional[Tensor] = None) -> 'MultiScaleLevels':
        """The layout of levels of the given (H_l, W_l), index tensors on the ratios' device."""
        shapes = tuple((int(h), int(w)) for h, w in shapes)
        spatial_shapes, level_start_index = level_index_tensors(shapes, valid_ratios.device)
        return cls(shapes, spatial_shapes, level_start_index, valid_ratios, padding_mask)


def valid_ratios(mask: Optional[Tensor], batch_size: int, device: torch.device) -> Tensor:
    """(bs, 2) as (w_ratio, h_ratio): the fractions of the width and height that hold the image.

    mask: (bs, H, W) True on padding, or None (no padding: ratios 1). Images are padded at the
    bottom and right, so the first column and row count the valid rows and columns.
    """
    if mask is None:
        return torch.ones(batch_size, 2, device=device)
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float()
    valid_w = (~mask[:, 0, :]).sum(1).float()
    return torch.stack([valid_w / w, valid_h / h], -1)


def encoder_reference_points(shapes: Sequence[Tuple[int, int]], ratios: Tensor) -> Tensor:
    """The centre of every pixel of every level, as a reference point on every level.

    Args:
        shapes: (H_l, W_l) of every level.
        ratios: (bs, L, 2) valid ratios as (w, h).

    Returns:
        (bs, N, L, 2) as (x, y): pixel (i, j) of level l, normalized by the valid size of level l
        (``(j + 0.5) / (w_ratio_l * W_l)``), then scaled by the valid ratio of each level.
    """
    points = []
    for lvl, (h, w) in enumerate(shapes):
        ys = torch.arange(h, dtype=torch.float32, device=ratios.device) + 0.5
        xs = torch.arange(w, dtype=torch.float32, device=ratios.device) + 0.5
        y, x = torch.meshgrid(ys, xs, indexing='ij')  # (h, w) each
        y = y.reshape(1, -1) / (ratios[:, lvl, 1:2] * h)  # (bs, h*w), in the valid region
        x = x.reshape(1, -1) / (ratios[:, lvl, 0:1] * w)
        points.append(torch.stack((x, y), -1))
    points = torch.cat(points, 1)  # (bs, N, 2)
    return points[:, :, None] * ratios[:, None]


def refine_boxes(reference: Tensor, delta: Tensor) -> Tensor:
    """Adds a predicted ``delta`` to a reference in inverse-sigmoid space.

    Args:
        reference: (..., 2) points (cx, cy) or (..., 4) boxes (cx, cy, w, h), in [0, 1].
        delta: (..., 4) unnormalized (cx, cy, w, h) offsets; for a point reference, w and h are
            predicted outright.

    Returns:
        (..., 4) boxes cxcywh in [0, 1], float32 (under autocast too: boxes refined layer after
        layer in bfloat16 would drift by its 3 significant digits).
    """
    delta, reference = delta.float(), reference.float()
    if reference.shape[-1] == 4:
        return (delta + inverse_sigmoid(reference)).sigmoid()
    return torch.cat((delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]), -1).sigmoid()


@MODELS.register_module()
class DeformableDetrTransformerEncoder(nn.Module):
    """``num_layers`` deformable self-attention layers over the tokens of all levels.

    Every token attends around its own pixel centre on every level.
    """

    def __init__(self, num_layers: int = 6, layer_cfg: Optional[dict] = None) -> None:
        super().__init__()
        layer_cfg = layer_cfg or {}
        self.layers = nn.ModuleList(DeformableEncoderLayer(**layer_cfg) for _ in range(num_layers))

    def forward(self, x: Tensor, pos: Tensor, levels: MultiScaleLevels) -> Tensor:
        """x, pos: (bs, N, C) tokens and their positional + level embeddings. Returns (bs, N, C)."""
        reference_points = encoder_reference_points(levels.shapes, levels.valid_ratios)
        for layer in self.layers:
            x = layer(x, pos, reference_points, levels.spatial_shapes, levels.level_start_index,
                      levels.padding_mask)
        return x


@MODELS.register_module()
class DeformableDetrTransformerDecoder(nn.Module):
    """``num_layers`` decoder layers whose cross-attention samples around each query's reference.

    With ``box_heads`` (iterative bounding-box refinement) layer ``i``'s head refines the reference
    after the layer, and the next layer starts from the refined box, detached.
    """

    def __init__(self, num_layers: int = 6, layer_cfg: Optional[dict] = None) -> None:
        super().__init__()
        layer_cfg = layer_cfg or {}
        self.layers = nn.ModuleList(DeformableDecoderLayer(**layer_cfg) for _ in range(num_layers))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, query: Tensor, query_pos: Tensor, reference: Tensor, memory: Tensor,
                levels: MultiScaleLevels,
                box_heads: Optional[nn.ModuleList] = None) -> Tuple[Tensor, List[Tensor]]:
        """
        Args:
            query, query_pos: (bs, Q, C) content queries and their positional embeddings.
            reference: (bs, Q, 2) points (cx, cy) or (bs, Q, 4) boxes cxcywh, in [0, 1] of the
                valid image region.
            memory: (bs, N, C) encoder output.
            levels: layout of ``memory``.
            box_heads: one box head per layer (at least ``num_layers``), mapping (bs, Q, C) to
                (bs, Q, 4) deltas, or None (the reference stays fixed).

        Returns:
            The output of every layer, (num_layers, bs, Q, C), and the reference every layer
            started from: ``num_layers`` tensors (bs, Q, 2 or 4) (points become boxes after the
            first refinement).
        """
        if box_heads is not None and len(box_heads) < self.num_layers:
            raise ValueError(f'box_heads has {len(box_heads)} heads for {self.num_layers} layers')
        hidden, references = [], []
        for i, layer in enumerate(self.layers):
            ratios = levels.valid_ratios  # (bs, L, 2)
            if reference.shape[-1] == 4:
                ratios = torch.cat([ratios, ratios], -1)  # w and h scale as x and y
            reference_input = reference[:, :, None] * ratios[:, None]  # (bs, Q, L, 2|4)
            query = layer(query, query_pos, reference_input, memory, levels.spatial_shapes,
                          levels.level_start_index, levels.padding_mask)
            hidden.append(query)
            references.append(reference)
            if box_heads is not None:
                reference = refine_boxes(reference, box_heads[i](query)).detach()
        return torch.stack(hidden), references
