"""D-FINE's fine-grained box distributions (Peng et al. 2025, Sec. 3.2, Eq. 3-4).

Each box edge is a distribution over ``reg_max + 1`` bins; bin ``n`` stands for the offset W(n)
of the edge from the reference box, in units of the reference's width or height divided by
``reg_scale``. W is non-uniform: dense near 0 (fine corrections) and sparse at both ends::

    c = up * reg_scale,   step = (c + 1) ** (2 / (reg_max - 2)),   h = reg_max / 2
    W(0) = -2c,   W(n) = 1 - step ** (h - n)   for 0 < n < h,   W(h) = 0,
    W(n) = step ** (n - h) - 1   for h < n < reg_max,   W(reg_max) = 2c

An edge's offset is the expectation ``sum_n softmax(p)_n W(n)``; a box edge sits
``(reg_scale / 2 + offset) * size / reg_scale`` from the reference centre, so offset 0 reproduces
the reference box. Training targets split a gt offset between its two neighbouring bins with
linear-interpolation weights.
"""
from typing import NamedTuple

import torch
from torch import Tensor


class BinTargets(NamedTuple):
    """Two-bin targets of N gt edges (N = 4 * number of boxes, edge order left, top, right, bottom).

    ``index`` is the left bin as a float, clamped to [0, reg_max - eps]: cross-entropy targets are
    ``floor(index)`` (weight ``weight_left``) and ``floor(index) + 1`` (weight ``weight_right``).
    """
    index: Tensor         # (N,) float
    weight_right: Tensor  # (N,)
    weight_left: Tensor   # (N,)


def weighting_function(reg_max: int, up: Tensor, reg_scale: Tensor) -> Tensor:
    """W(n) for n = 0 .. reg_max (module docstring), differentiable w.r.t. ``up`` and ``reg_scale``.

    Args:
        reg_max: number of bins minus one; even and at least 4.
        up: (1,) upper-bound factor (0.5 in D-FINE); only ``up[0]`` is used.
        reg_scale: (1,) or scalar curvature factor (4 in D-FINE).
    Returns:
        (reg_max + 1,) increasing, antisymmetric about bin reg_max / 2, dtype/device of ``up``.
    """
    if reg_max < 4 or reg_max % 2:
        raise ValueError(f'box_distribution: reg_max must be even and >= 4, got {reg_max}')
    half = reg_max // 2
    bound = (up[0].abs() * reg_scale.abs()).reshape(1).to(up.dtype)  # (1,)
    step = (bound + 1) ** (2 / (reg_max - 2))
    inner = [step ** i - 1 for i in range(1, half)]  # W(h + i), i = 1 .. h - 1
    return torch.cat([-2 * bound] + [-v for v in reversed(inner)] + [torch.zeros_like(bound)]
                     + inner + [2 * bound])


def distribution_to_distances(corners: Tensor, weights: Tensor) -> Tensor:
    """Expected edge offsets of per-edge bin logits.

    Args:
        corners: (..., 4 * (reg_max + 1)) logits, edges in order left, top, right, bottom.
        weights: (reg_max + 1,) W(n) from :func:`weighting_function`.
    Returns:
        (..., 4) ``sum_n softmax(corners_edge)_n * W(n)`` per edge.
    """
    num_bins = weights.shape[0]
    if corners.shape[-1] != 4 * num_bins:
        raise ValueError(f'box_distribution: corners last dim {corners.shape[-1]} != 4 * '
                         f'{num_bins} bins')
    prob = corners.reshape(*corners.shape[:-1], 4, num_bins).softmax(-1)
    return prob @ weights.to(prob.device)


def distances_to_boxes(reference: Tensor, distances: Tensor, reg_scale: Tensor) -> Tensor:
    """Boxes whose edges lie at the given offsets from the reference box.

    Args:
        reference: (..., 4) cxcywh reference boxes.
        distances: (..., 4) offsets of the left, top, right, bottom edges (W units).
        reg_scale: (1,) or scalar; its absolute value is used.
    Returns:
        (..., 4) cxcywh boxes.
    """
    scale = reg_scale.abs()
    centre, size = reference[..., :2], reference[..., 2:]
    unit = size / scale  # one W unit in image coordinates
    # (..., 2, 2): the distances from the centre of the left and top, then right and bottom edges
    reach = (0.5 * scale + distances.unflatten(-1, (2, 2))) * unit[..., None, :]
    top_left = centre - reach[..., 0, :]
    bottom_right = centre + reach[..., 1, :]
    return torch.cat([(top_left + bottom_right) / 2, bottom_right - top_left], -1)


@torch.no_grad()
def boxes_to_bins(reference: Tensor, boxes_xyxy: Tensor, weights: Tensor, reg_scale: Tensor,
                  eps: float = 0.1) -> BinTargets:
    """Two-bin targets of gt boxes relative to reference boxes (inverse of the decoding above).

    Each gt edge offset ``d`` (in W units) gets left bin ``n`` = the largest with W(n) <= d and
    weights ``(W(n+1) - d, d - W(n)) / (W(n+1) - W(n))`` on bins (n, n+1). Below W(0) all weight
    goes to bin 0; at or above W(reg_max) it goes to the right target of index ``reg_max - eps``
    (cross-entropy target ``reg_max``, as floor(reg_max - eps) + 1).

    Args:
        reference: (N, 4) cxcywh reference boxes.
        boxes_xyxy: (N, 4) gt boxes, xyxy, same coordinates as ``reference``.
        weights: (reg_max + 1,) W(n) from :func:`weighting_function` (the head's cached table).
        reg_scale: (1,) or scalar; its absolute value is used.
        eps: keeps ``index`` below reg_max.
    Returns:
        :class:`BinTargets` with 4 * N entries, box-major (box 0's left, top, right, bottom,
        then box 1's, ...).
    """
    reg_max = weights.shape[0] - 1
    scale = reg_scale.abs()
    centre, size = reference[:, :2], reference[:, 2:]
    unit = size / scale + 1e-16
    # (N, 2, 2): the left and top edges' distances from the centre, then the right and bottom's
    reach = (torch.cat([centre, boxes_xyxy[:, 2:]], 1)
             - torch.cat([boxes_xyxy[:, :2], centre], 1)).unflatten(1, (2, 2))
    offsets = (reach / unit[:, None] - 0.5 * scale).reshape(-1)

    # bins at or below each offset: 0 below W(0), reg_max + 1 at or above W(reg_max)
    count = (weights[None, :] <= offsets[:, None]).sum(1)
    left = (count - 1).clamp(0, reg_max - 1)
    # |d - W(n)|, |W(n + 1) - d| in one subtraction of the neighbouring pair (negation is exact)
    gaps = (weights.unfold(0, 2, 1)[left] - offsets[:, None]).abs()
    above = count > reg_max
    weight_right = (gaps[:, 0] / (gaps[:, 0] + gaps[:, 1])).masked_fill(count == 0, 0)
    weight_right = weight_right.masked_fill(above, 1)
    index = left.to(offsets.dtype).masked_fill(above, reg_max - 0.1)
    return BinTargets(index.clamp(0, reg_max - eps), weight_right, 1 - weight_right)
