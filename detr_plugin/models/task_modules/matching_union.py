"""D-FINE's GO-LSD matching union (Peng et al. 2025, Sec. 3.3): one set of (query, gt) pairs per
image gathered from the Hungarian matches of every decoder layer (and of the pre-decoder and
encoder proposals), on which all layers' box and localization losses are then computed.

Every distinct pair is counted over the given matchings; pairs are ranked by count, most frequent
first; each query keeps its first pair in that ranking (a gt may be kept by several queries), and
the kept pairs come out in ranking order. Pairs of equal count are ranked as the original ranks
them: ``torch.argsort(counts, descending=True)`` over the pairs in ``torch.unique``'s
lexicographic (query, gt) order, on the CPU (the original's matcher returns CPU indices). That sort
is not stable and its tie order is the CPU kernel's, which decides the gt of a query with equally
frequent pairs; so the ranking runs on the CPU here too, whatever the input's device.
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
        ranking order of the module docstring, on the input's device (the ranking itself runs
        on the CPU, after one device-to-host copy).
    """
    if len(matchings) == 0:
        raise ValueError('matching_union: needs at least one matching')
    batch_size = len(matchings[0])
    if any(len(m) != batch_size for m in matchings):
        raise ValueError(f'matching_union: every matching must hold {batch_size} images, got '
                         f'{[len(m) for m in matchings]}')
    if batch_size == 0:
        return []
    per_image = [torch.cat([torch.stack(m[b]) for m in matchings], dim=1).long()
                 for b in range(batch_size)]  # (2, n_b)
    device = per_image[0].device
    sizes = [p.shape[1] for p in per_image]
    host = torch.cat(per_image, dim=1).cpu().split(sizes, dim=1)  # one device-to-host copy
    unions = [_image_union(pairs) for pairs in host]
    kept = torch.cat(unions, dim=1).to(device, non_blocking=True)  # the host need not wait
    kept = kept.split([u.shape[1] for u in unions], dim=1)
    return [(k[0], k[1]) for k in kept]


def _image_union(pairs: Tensor) -> Tensor:
    """(2, n) query/gt rows of one image, on the CPU -> (2, m) kept pairs in ranking order."""
    if pairs.shape[1] == 0:
        return pairs
    distinct, counts = torch.unique(pairs.T, dim=0, return_counts=True)  # lexicographic (q, g)
    ranked = distinct[torch.argsort(counts, descending=True)]  # ties: the original's order
    # rank of each query's first (best) pair
    queries, query_of_rank = torch.unique(ranked[:, 0], return_inverse=True)
    rank = torch.arange(ranked.shape[0])
    first = torch.full_like(queries, ranked.shape[0]).scatter_reduce(0, query_of_rank, rank, 'amin')
    return ranked[first.sort().values].T
