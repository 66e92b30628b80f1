"""Independent references for multi-scale deformable attention, written from the definition.

None uses grid_sample or the code under test. ``naive_msda`` is a Python loop over every sampling
point and its four bilinear corners, ``naive_discrete_msda`` the same loop reading one nearest cell
(for small CPU cases); ``gather_msda`` is the same arithmetic vectorized with ``torch.gather``,
differentiable, for float64 references of larger GPU cases (both methods).

Bilinear convention: location (x, y) in [0, 1] -> pixel (x * W - 0.5, y * H - 0.5); a corner off
the map contributes 0. Discrete convention (RT-DETRv2): cell (floor(x * W + 0.5), floor(y * H +
0.5)), clamped to the map. Tensors: value (bs, num_value, heads, dim); shapes [(H_l, W_l), ...];
locations (bs, num_query, heads, levels, points, 2) and weights (bs, num_query, heads, levels,
points), or, with ``num_points`` (P_0, ...), locations (bs, num_query, heads, sum(P_l), 2) and
weights (bs, num_query, heads, sum(P_l)) with level l's points contiguous.
"""
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

Shapes = List[Tuple[int, int]]


def flat_layout(locations: Tensor, weights: Tensor, num_points: Optional[Sequence[int]]):
    """-> locations (bs, Q, heads, sum(P_l), 2), weights (bs, Q, heads, sum(P_l)), [P_l, ...]."""
    if locations.dim() == 6:
        levels, points = locations.shape[3:5]
        return locations.flatten(3, 4), weights.flatten(3, 4), [points] * levels
    return locations, weights, list(num_points)


def point_levels(num_points: Sequence[int]) -> List[int]:
    """The level of each point of the flat layout, written out."""
    return [level for level, n in enumerate(num_points) for _ in range(n)]


def naive_msda(value: Tensor, shapes: Shapes, locations: Tensor, weights: Tensor,
               num_points: Optional[Sequence[int]] = None) -> Tensor:
    """Point-by-point bilinear loop in float64; returns (bs, num_query, heads * dim)."""
    value, locations, weights = value.double(), locations.double(), weights.double()
    locations, weights, num_points = flat_layout(locations, weights, num_points)
    bs, _, heads, dim = value.shape
    num_query = locations.shape[1]
    starts = [sum(h * w for h, w in shapes[:level]) for level in range(len(shapes))]
    out = torch.zeros(bs, num_query, heads, dim, dtype=torch.float64)
    for b in range(bs):
        for q in range(num_query):
            for h in range(heads):
                for p, level in enumerate(point_levels(num_points)):
                    height, width = shapes[level]
                    x = locations[b, q, h, p, 0].item() * width - 0.5
                    y = locations[b, q, h, p, 1].item() * height - 0.5
                    x0, y0 = math.floor(x), math.floor(y)
                    fx, fy = x - x0, y - y0
                    sample = torch.zeros(dim, dtype=torch.float64)
                    for dy, dx, corner_weight in ((0, 0, (1 - fy) * (1 - fx)),
                                                  (0, 1, (1 - fy) * fx),
                                                  (1, 0, fy * (1 - fx)),
                                                  (1, 1, fy * fx)):
                        yy, xx = y0 + dy, x0 + dx
                        if 0 <= yy < height and 0 <= xx < width:
                            token = starts[level] + yy * width + xx
                            sample += corner_weight * value[b, token, h]
                    out[b, q, h] += weights[b, q, h, p] * sample
    return out.reshape(bs, num_query, heads * dim)


def naive_discrete_msda(value: Tensor, shapes: Shapes, locations: Tensor, weights: Tensor,
                        num_points: Optional[Sequence[int]] = None) -> Tensor:
    """Point-by-point nearest-cell loop in float64 (Python floats: locations exact in float64);
    returns (bs, num_query, heads * dim)."""
    value, locations, weights = value.double(), locations.double(), weights.double()
    locations, weights, num_points = flat_layout(locations, weights, num_points)
    bs, _, heads, dim = value.shape
    num_query = locations.shape[1]
    starts = [sum(h * w for h, w in shapes[:level]) for level in range(len(shapes))]
    out = torch.zeros(bs, num_query, heads, dim, dtype=torch.float64)
    for b in range(bs):
        for q in range(num_query):
            for h in range(heads):
                for p, level in enumerate(point_levels(num_points)):
                    height, width = shapes[level]
                    col = math.floor(locations[b, q, h, p, 0].item() * width + 0.5)
                    row = math.floor(locations[b, q, h, p, 1].item() * height + 0.5)
                    col, row = min(max(col, 0), width - 1), min(max(row, 0), height - 1)
                    token = starts[level] + row * width + col
                    out[b, q, h] += weights[b, q, h, p] * value[b, token, h]
    return out.reshape(bs, num_query, heads * dim)


def gather_msda(value: Tensor, shapes: Shapes, locations: Tensor, weights: Tensor,
                num_points: Optional[Sequence[int]] = None, method: str = 'default',
                cell_dtype: Optional[torch.dtype] = None) -> Tensor:
    """Vectorized gather, differentiable in value and weights (and, bilinear, in the locations);
    (bs, num_query, heads*dim).

    Bilinear: the cell index floor(pixel) is held constant, so d/dx is the slope inside the cell,
    as in the kernels and grid_sample. Discrete: the cells are computed in ``cell_dtype`` (default:
    the locations' own; pass the dtype the op saw when these are upcast copies), multiply then add,
    so that a float32 op and this float64 reference round a location to the same cell.
    """
    locations, weights, num_points = flat_layout(locations, weights, num_points)
    bs, _, heads, dim = value.shape
    num_query = locations.shape[1]
    out = value.new_zeros(bs, num_query, heads, dim)
    start, first = 0, 0
    for (height, width), points in zip(shapes, num_points):
        feature = value[:, start:start + height * width].transpose(1, 2)  # (bs, heads, HW, dim)
        start += height * width
        loc = locations[:, :, :, first:first + points]  # (bs, num_query, heads, points, 2)
        weight = weights[:, :, :, first:first + points]
        first += points
        if method == 'discrete':
            corners = _nearest_corner(loc, height, width, cell_dtype or loc.dtype)
        else:
            corners = _bilinear_corners(loc, height, width)
        for xx, yy, corner_weight in corners:
            on_map = (xx >= 0) & (xx < width) & (yy >= 0) & (yy < height)
            token = (yy.clamp(0, height - 1) * width + xx.clamp(0, width - 1)).long()
            token = token.permute(0, 2, 1, 3).reshape(bs, heads, num_query * points, 1)
            sampled = feature.gather(2, token.expand(-1, -1, -1, dim))  # (bs, heads, Q*P, dim)
            sampled = sampled.view(bs, heads, num_query, points, dim).transpose(1, 2)
            scale = weight * corner_weight * on_map  # (bs, num_query, heads, points)
            out = out + (scale[..., None] * sampled).sum(3)
    return out.reshape(bs, num_query, heads * dim)


def _bilinear_corners(loc: Tensor, height: int, width: int):
    x = loc[..., 0] * width - 0.5  # (bs, num_query, heads, points)
    y = loc[..., 1] * height - 0.5
    x0, y0 = x.detach().floor(), y.detach().floor()
    fx, fy = x - x0, y - y0
    return [(x0 + dx, y0 + dy, w) for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)),
                                                    (0, 1, (1 - fy) * fx),
                                                    (1, 0, fy * (1 - fx)), (1, 1, fy * fx))]


def _nearest_corner(loc: Tensor, height: int, width: int, cell_dtype: torch.dtype):
    loc = loc.detach().to(cell_dtype)
    col = torch.floor(loc[..., 0] * width + 0.5).clamp(0, width - 1)
    row = torch.floor(loc[..., 1] * height + 0.5).clamp(0, height - 1)
    return [(col.double(), row.double(), 1.0)]  # exact indices (bfloat16 holds few integers)


def random_inputs(bs: int, num_query: int, heads: int, dim: int, shapes: Shapes,
                  points: Union[int, Sequence[int]], dtype=torch.float64, device='cpu',
                  margin: float = 0.1, generator=None):
    """value, spatial_shapes, level_start_index, locations, weights; locations uniform in
    [-margin, 1 + margin] (some points off the map), weights positive and summing to 1 per head.

    ``points``: an int P gives the (..., levels, P, 2) layout; a list (P_0, ...) the
    (..., sum(P_l), 2) one."""
    levels = len(shapes)
    num_value = sum(h * w for h, w in shapes)
    total = points * levels if isinstance(points, int) else sum(points)
    kw = dict(generator=generator, dtype=torch.float64)
    value = torch.randn(bs, num_value, heads, dim, **kw)
    locations = torch.rand(bs, num_query, heads, total, 2, **kw) * (1 + 2 * margin) - margin
    weights = torch.rand(bs, num_query, heads, total, **kw).softmax(-1)
    if isinstance(points, int):
        locations = locations.view(bs, num_query, heads, levels, points, 2)
        weights = weights.view(bs, num_query, heads, levels, points)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return (value.to(device, dtype), spatial_shapes.to(device), level_start_index.to(device),
            locations.to(device, dtype), weights.to(device, dtype))


def strided_copy(t: Tensor) -> Tensor:
    """Same values, non-contiguous layout (every other element of a wider buffer)."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    return wide[..., ::2]


def case_inputs(case: dict, seed: int, margin: float, device: str = 'cuda'):
    """value, spatial_shapes, level_start_index, locations, weights and grad_output
    (bs, num_query, heads * dim) of a random-case dict (bs, num_query, heads, dim, shapes, points,
    dtype, strided) drawn from ``seed``; non-contiguous copies of the four when ``strided``."""
    gen = torch.Generator().manual_seed(seed)
    value, spatial_shapes, start, loc, weight = random_inputs(
        case['bs'], case['num_query'], case['heads'], case['dim'], case['shapes'], case['points'],
        dtype=case['dtype'], device=device, margin=margin, generator=gen)
    grad_out = torch.randn(case['bs'], case['num_query'], case['heads'] * case['dim'],
                           generator=gen, dtype=torch.float64).to(device, case['dtype'])
    if case['strided']:
        value, loc, weight, grad_out = map(strided_copy, (value, loc, weight, grad_out))
    return value, spatial_shapes, start, loc, weight, grad_out
