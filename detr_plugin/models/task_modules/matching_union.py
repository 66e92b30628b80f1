"""D-FINE's GO-LSD matching union (Peng et al. 2025, Sec. 3.3): one set of (query, gt) pairs per
image gathered from the Hungarian matches of every decoder layer (and of the pre-decoder and
encoder proposals), on which all layers' box and localization losses are then computed.

Every distinct pair is counted over the given matchings; pairs are ranked by count, most frequent
first; each query keeps its first pair in that ranking (a gt may be kept by several queries), and
the kept pairs come out in ranking order. Pairs of equal count are ranked as the original ranks
them: ``torch.argsort(counts, descending=True)`` over the pairs in ``torch.unique``'s
lexicographic (query, gt) order. That sort is not stable and its tie order is the sort kernel's
(CPU and CUDA kernels may differ), so only the same call on the same device reproduces the
original's choice between equally frequent pairs, which decides the gt of such a query.
"""
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

Pairs = Tuple[Tensor, Tensor]  # (query_idx, gt_idx), LongTensors of equal length


def matching_union(matchings: Sequence[Sequence[Pairs]]) -> List[Pairs]:
    """Union of several matchings of the same batch.

    Args:
        matchings: ``matchings[k][b] = (query_idx, gt_idx)`` for matching k (e.g. the entries of
            :attr:`Matches.pairs` of every layer, then the encoder's) and image b; the order of
            the matchings does not change the result.
    Returns:
        ``union[b] = (query_idx, gt_idx)``, LongTensors with one entry per matched query, in the
        ranking order of the module docstring, on the input's device.
    """
    if len(matchings) == 0:
        raise ValueError('matching_union: needs at least one matching')
    batch_size = len(matchings[0])
    if any(len(m) != batch_size for m in matchings):
        raise ValueError(f'matching_union: every matching must hold {batch_size} images, got '
                         f'{[len(m) for m in matchings]}')
    return [_image_union([torch.stack(m[b]) for m in matchings]) for b in range(batch_size)]


def _image_union(pairs: List[Tensor]) -> Pairs:
    """One image: ``pairs`` are (2, n_k) query/gt rows of each matching."""
    pairs = torch.cat(pairs, dim=1).long().T  # (n, 2)
    if pairs.shape[0] == 0:
        return pairs[:, 0], pairs[:, 1]
    distinct, counts = torch.unique(pairs, dim=0, return_counts=True)  # lexicographic (q, g)
    ranked = distinct[torch.argsort(counts, descending=True)]  # ties: the original's order
    # rank of each query's first (best) pair
    queries, query_of_rank = torch.unique(ranked[:, 0], return_inverse=True)
    rank = torch.arange(ranked.shape[0], device=pairs.device)
    first = torch.full_like(queries, ranked.shape[0]).scatter_reduce(0, query_of_rank, rank, 'amin')
    kept = ranked[first.sort().values]
    return kept[:, 0], kept[:, 1]
