"""The index tensors that describe flattened feature levels and their sampling points, made once
per layout and device."""
import functools
from typing import Tuple

import torch
from torch import Tensor

Shapes = Tuple[Tuple[int, int], ...]


@functools.lru_cache(maxsize=64)
def level_index_tensors(shapes: Shapes, device: torch.device) -> Tuple[Tensor, Tensor]:
    """((H_0, W_0), (H_1, W_1), ...) -> spatial_shapes (L, 2) long and level_start_index (L,)
    long on ``device``.

    The same two tensors are returned for the same layout (do not modify them in place), so a
    model that asks for them on every forward neither copies host -> device nor, through the MSDA
    op's layout check, device -> host after the first call. That keeps inference free of host
    synchronisation and capturable in a CUDA graph.
    """
    with torch.inference_mode(False):  # usable by training later, also if first made in inference
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=device).reshape(-1, 2)
        sizes = spatial_shapes.prod(1)
        level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index


@functools.lru_cache(maxsize=64)
def point_level_tensors(level_points: Tuple[int, ...],
                        device: torch.device) -> Tuple[Tensor, Tensor]:
    """(P_0, P_1, ...) sampling points per level -> for each of the sum(P_l) points, level l's
    points contiguous: its level (long) and its level's point count P_l (long), both on ``device``.

    Cached like :func:`level_index_tensors` (same tensors for the same layout; no host -> device
    copy after the first call).
    """
    with torch.inference_mode(False):
        counts = torch.tensor(level_points, dtype=torch.long)
        levels = torch.repeat_interleave(torch.arange(len(level_points)), counts)
        return levels.to(device), counts[levels].to(device)
