"""MultiScaleDeformableAttention: the MSDeformAttn module of Deformable DETR (Zhu et al., 2021),
with RT-DETRv2's per-level point counts and discrete sampling (Lv et al., 2024).

Each query predicts, per head, level and point, a sampling offset around its reference point and an
attention weight (softmax over all of a head's level x point pairs); the projected value is sampled
there by ``multi_scale_deformable_attention``, and the heads are mixed by ``output_proj``. The
calling layer adds the residual and dropout. Offsets and weights become sampling locations in
:class:`SamplingPoints`, a module without parameters whose output a forward hook can record.

Point layout: level l has P_l points per head; the linear layers' outputs are ordered
(head, point, xy) with level l's points contiguous, which for P points on every level is
Deformable DETR's (head, level, point, xy) and for a list is RT-DETRv2's ``num_points_list``
layout, so the checkpoints of both load unchanged.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..registry import MODELS
from .ms_deform_attn import METHODS, multi_scale_deformable_attention


class SamplingPoints(nn.Module):
    """Turns predicted offsets and attention logits into sampling locations and weights.

    A step of :class:`MultiScaleDeformableAttention` with no parameters, kept as a module of its
    own so that a forward hook sees exactly the locations and weights handed to the op (e.g.
    tools/analysis/visualize_sampling_points.py); hooks receive the inputs too.

    Its two buffers (for uneven point counts) are derived from ``level_points`` and not saved:
    checkpoints keep their keys, and ``.to(device)`` moves them with the model, so no forward
    copies them to the device.

    Args:
        level_points: (P_0, ..., P_{L-1}) sampling points per level.
    """

    def __init__(self, level_points: Tuple[int, ...]):
        super().__init__()
        self.level_points = level_points
        counts = torch.tensor(level_points, dtype=torch.long)
        levels = torch.repeat_interleave(torch.arange(len(level_points)), counts)
        # (sum(P_l),) long: each point's level, and its level's point count P_l
        self.register_buffer('point_level', levels, persistent=False)
        self.register_buffer('point_count', counts[levels], persistent=False)

    def forward(self, reference_points: Tensor, offsets: Tensor, logits: Tensor,
                spatial_shapes: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Args:
            reference_points: (bs, Q, L or 1, 2) points (x, y) or (..., 4) boxes (cx, cy, w, h),
                normalized to [0, 1] of each level's padded map.
            offsets: (x, y), (bs, Q, heads, L, P, 2) when every level has P points, else
                (bs, Q, heads, sum(P_l), 2): in pixels of the point's level for point
                references, in units of the box's half size / P_l for box references.
            logits: (bs, Q, heads, sum(P_l)) attention logits.
            spatial_shapes: (L, 2) integer (H_l, W_l).

        Returns:
            Locations shaped like offsets, (x, y) normalized to [0, 1] of the point's level's
            padded map, and weights shaped like offsets without the last dimension, a softmax
            over each head's sum(P_l) points.
        """
        weights = logits.softmax(-1).view(offsets.shape[:-1])
        uniform = offsets.dim() == 6
        if uniform:  # P points on every level: broadcast over the points
            ref = reference_points[:, :, None, :, None, :]  # (bs, Q, 1, L or 1, 1, 2|4)
        else:  # per point: its level's reference
            if reference_points.shape[2] > 1:
                reference_points = reference_points.index_select(2, self.point_level)
            ref = reference_points[:, :, None]  # (bs, Q, 1, sum(P_l) or 1, 2|4)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: (W_l, H_l) normalizes them
            size_xy = spatial_shapes.flip(-1)  # (L, 2) as (W_l, H_l)
            # per level (1, 1, 1, L, 1, 2), or per point (sum(P_l), 2)
            size_xy = (size_xy[None, None, None, :, None, :] if uniform
                       else size_xy.index_select(0, self.point_level))
            return ref + offsets / size_xy.to(offsets.dtype), weights
        # offsets are in units of the box's half size, divided among the level's points: the
        # original's offsets * (1 / P_l) * wh * offset_scale (0.5), bitwise when P_l is a power
        # of two
        points = offsets.shape[4] if uniform else self.point_count[:, None]  # P or (sum(P_l), 1)
        return ref[..., :2] + offsets / points * ref[..., 2:] * 0.5, weights


@MODELS.register_module()
class MultiScaleDeformableAttention(nn.Module):
    """Multi-scale deformable attention with the paper's initialization.

    Args:
        embed_dims: channels C of query, value and output; divisible by num_heads.
        num_heads: attention heads; each samples C / num_heads channels.
        num_levels: feature levels L.
        num_points: sampling points per head and level: P (every level) or [P_0, ..., P_{L-1}]
            (RT-DETRv2's ``num_points`` list).
        method: 'default' (bilinear sampling) or 'discrete' (RT-DETRv2's nearest-cell sampling;
            its locations get no gradient, so sampling_offsets is frozen, as in the original).
        backend: forwarded to ``multi_scale_deformable_attention`` (None: automatic).
        projections: False for D-FINE's attention, which samples the value as given and returns
            the heads' samples concatenated (no ``value_proj`` / ``output_proj``).
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: Union[int, Sequence[int]] = 4, method: str = 'default',
                 backend: Optional[str] = None, projections: bool = True):
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f'embed_dims ({embed_dims}) must be divisible by num_heads '
                             f'({num_heads})')
        self.level_points = _level_points(num_points, num_levels)
        if method not in METHODS:
            raise ValueError(f'method must be one of {METHODS}, got {method!r}')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.method = method
        self.backend = backend
        total_points = num_heads * sum(self.level_points)
        self.sampling_offsets = nn.Linear(embed_dims, total_points * 2)
        self.attention_weights = nn.Linear(embed_dims, total_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims) if projections else nn.Identity()
        self.output_proj = nn.Linear(embed_dims, embed_dims) if projections else nn.Identity()
        self.sampling_points = SamplingPoints(self.level_points)
        self.init_weights()
        if method == 'discrete':
            self.sampling_offsets.requires_grad_(False)

    def init_weights(self) -> None:
        """Offsets start on a circle per head, at distance i + 1 for a level's point i (bias only,
        weight 0); attention starts uniform (weight and bias 0); projections are xavier-uniform,
        bias 0."""
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)  # (heads, 2) as (x, y)
        grid = grid / grid.abs().max(-1, keepdim=True).values  # onto the square of radius 1
        # (sum(P_l),): 1..P_l on each level
        scale = torch.cat([torch.arange(1, n + 1, dtype=torch.float32) for n in self.level_points])
        bias = grid[:, None, :] * scale[None, :, None]  # (heads, sum(P_l), 2)
        with torch.no_grad():
            self.sampling_offsets.weight.zero_()
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
            self.attention_weights.weight.zero_()
            self.attention_weights.bias.zero_()
            for proj in (self.value_proj, self.output_proj):
                if isinstance(proj, nn.Linear):
                    nn.init.xavier_uniform_(proj.weight)
                    proj.bias.zero_()

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor,
                value_padding_mask: Optional[Tensor] = None,
                shapes: Optional[Sequence[Tuple[int, int]]] = None) -> Tensor:
        """Attends from each query to P_l points per head and level l around its reference.

        Args:
            query: (bs, num_query, C), positional embedding already added.
            reference_points: (bs, num_query, L or 1, 2) as (x, y), or (..., 4) as (cx, cy, w, h),
                normalized to [0, 1]; one size-1 level is shared by all levels.
            value: (bs, num_value, C), the levels' tokens concatenated.
            spatial_shapes: (L, 2) integer (H_l, W_l); level_start_index: (L,).
            value_padding_mask: (bs, num_value) bool, True on padding (zeroed before sampling).
            shapes: the (H_l, W_l) of spatial_shapes on the host (``MultiScaleLevels.shapes``);
                given, the op reads no tensor back from the device (no wait for the GPU, CUDA
                graph capture); None, it reads spatial_shapes at every call.

        Returns:
            (bs, num_query, C), after output_proj (if any).
        """
        bs, num_query, _ = query.shape
        heads, levels = self.num_heads, self.num_levels
        if value.dim() != 3 or value.shape[0] != bs or value.shape[2] != self.embed_dims:
            raise ValueError(f'value must be (bs={bs}, num_value, {self.embed_dims}), got '
                             f'{tuple(value.shape)}')
        if (reference_points.dim() != 4 or reference_points.shape[:2] != (bs, num_query)
                or reference_points.shape[2] not in (1, levels)
                or reference_points.shape[3] not in (2, 4)):
            raise ValueError(f'reference_points must be (bs={bs}, num_query={num_query}, '
                             f'{levels} or 1, 2 or 4), got {tuple(reference_points.shape)}')
        if spatial_shapes.shape[0] != levels:
            raise ValueError(f'spatial_shapes has {spatial_shapes.shape[0]} levels, the module '
                             f'{levels}')

        value = self.value_proj(value)
        if value_padding_mask is not None:
            if value_padding_mask.shape != value.shape[:2]:
                raise ValueError(f'value_padding_mask must be {tuple(value.shape[:2])}, got '
                                 f'{tuple(value_padding_mask.shape)}')
            value = value.masked_fill(value_padding_mask[..., None], 0.0)
        value = value.view(bs, -1, heads, self.embed_dims // heads)

        # (L, P) when every level has P points (Deformable DETR's layout), else (sum(P_l),)
        uniform = len(set(self.level_points)) == 1
        points = (levels, self.level_points[0]) if uniform else (sum(self.level_points),)
        offsets = self.sampling_offsets(query).view(bs, num_query, heads, *points, 2)
        logits = self.attention_weights(query).view(bs, num_query, heads, -1)
        locations, weights = self.sampling_points(reference_points, offsets, logits, spatial_shapes)
        # One dtype for the op. Under autocast, float32 locations are kept (and the rest upcast):
        # bfloat16 locations would move samples by up to half a pixel on a 150-pixel-wide level.
        dtype = torch.promote_types(value.dtype, locations.dtype)
        output = multi_scale_deformable_attention(
            value.to(dtype), spatial_shapes, level_start_index, locations.to(dtype),
            weights.to(dtype), backend=self.backend, num_points=self.level_points,
            method=self.method, shapes=shapes)
        return self.output_proj(output)  # (bs, num_query, C)


def _level_points(num_points: Union[int, Sequence[int]], num_levels: int) -> Tuple[int, ...]:
    """num_points as an int or a list of num_levels ints -> (P_0, ..., P_{L-1}), all positive."""
    listed = isinstance(num_points, (list, tuple))
    counts = tuple(num_points) if listed else (num_points,) * num_levels
    if len(counts) != num_levels or not all(isinstance(n, int) and n > 0 for n in counts):
        raise ValueError(f'num_points must be a positive int or a list of num_levels '
                         f'({num_levels}) positive ints, got {num_points!r}')
    return counts
