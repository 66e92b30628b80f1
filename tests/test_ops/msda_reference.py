"""Independent references for multi-scale deformable attention, written from the definition.

Neither uses grid_sample or the code under test. ``naive_msda`` is a Python loop over every sampling
point and its four bilinear corners (for small CPU cases); ``gather_msda`` is the same arithmetic
vectorized with ``torch.gather``, differentiable, for float64 references of larger GPU cases.
Sampling convention: location (x, y) in [0, 1] -> pixel (x * W - 0.5, y * H - 0.5); a corner off the
map contributes 0. Tensors: value (bs, num_value, heads, dim); locations (bs, num_query, heads,
levels, points, 2); weights (bs, num_query, heads, levels, points); shapes [(H_l, W_l), ...].
"""
import math
from typing import List, Tuple

import torch
from torch import Tensor

Shapes = List[Tuple[int, int]]


def naive_msda(value: Tensor, shapes: Shapes, locations: Tensor, weights: Tensor) -> Tensor:
    """Point-by-point loop in float64; returns (bs, num_query, heads * dim)."""
    value, locations, weights = value.double(), locations.double(), weights.double()
    bs, _, heads, dim = value.shape
    _, num_query, _, levels, points, _ = locations.shape
    starts = [sum(h * w for h, w in shapes[:level]) for level in range(levels)]
    out = torch.zeros(bs, num_query, heads, dim, dtype=torch.float64)
    for b in range(bs):
        for q in range(num_query):
            for h in range(heads):
                for level, (height, width) in enumerate(shapes):
                    for p in range(points):
                        x = locations[b, q, h, level, p, 0].item() * width - 0.5
                        y = locations[b, q, h, level, p, 1].item() * height - 0.5
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
                        out[b, q, h] += weights[b, q, h, level, p] * sample
    return out.reshape(bs, num_query, heads * dim)


def gather_msda(value: Tensor, shapes: Shapes, locations: Tensor, weights: Tensor) -> Tensor:
    """Vectorized bilinear gather, differentiable in all three tensors; (bs, num_query, heads*dim).

    The cell index floor(pixel) is held constant, so d/dx is the slope inside the cell, as in the
    kernels and grid_sample.
    """
    bs, _, heads, dim = value.shape
    _, num_query, _, levels, points, _ = locations.shape
    out = value.new_zeros(bs, num_query, heads, dim)
    start = 0
    for level, (height, width) in enumerate(shapes):
        feature = value[:, start:start + height * width].transpose(1, 2)  # (bs, heads, HW, dim)
        start += height * width
        x = locations[:, :, :, level, :, 0] * width - 0.5  # (bs, num_query, heads, points)
        y = locations[:, :, :, level, :, 1] * height - 0.5
        x0, y0 = x.detach().floor(), y.detach().floor()
        fx, fy = x - x0, y - y0
        for dy, dx, corner_weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                                      (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
            xx, yy = x0 + dx, y0 + dy
            on_map = (xx >= 0) & (xx < width) & (yy >= 0) & (yy < height)
            token = (yy.clamp(0, height - 1) * width + xx.clamp(0, width - 1)).long()
            token = token.permute(0, 2, 1, 3).reshape(bs, heads, num_query * points, 1)
            sampled = feature.gather(2, token.expand(-1, -1, -1, dim))  # (bs, heads, Q*P, dim)
            sampled = sampled.view(bs, heads, num_query, points, dim).transpose(1, 2)
            scale = weights[:, :, :, level] * corner_weight * on_map  # (bs, num_query, heads, P)
            out = out + (scale[..., None] * sampled).sum(3)
    return out.reshape(bs, num_query, heads * dim)


def random_inputs(bs: int, num_query: int, heads: int, dim: int, shapes: Shapes, points: int,
                  dtype=torch.float64, device='cpu', margin: float = 0.1, generator=None):
    """value, spatial_shapes, level_start_index, locations, weights; locations uniform in
    [-margin, 1 + margin] (some points off the map), weights positive and summing to 1."""
    levels = len(shapes)
    num_value = sum(h * w for h, w in shapes)
    kw = dict(generator=generator, dtype=torch.float64)
    value = torch.randn(bs, num_value, heads, dim, **kw)
    locations = torch.rand(bs, num_query, heads, levels, points, 2, **kw) * (1 + 2 * margin) - margin
    weights = torch.rand(bs, num_query, heads, levels * points, **kw).softmax(-1)
    weights = weights.view(bs, num_query, heads, levels, points)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return (value.to(device, dtype), spatial_shapes.to(device), level_start_index.to(device),
            locations.to(device, dtype), weights.to(device, dtype))
