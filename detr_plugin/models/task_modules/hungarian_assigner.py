"""One-to-one Hungarian matching of DETR queries to ground truths, for all decoder layers at once.

mmdet's ``HungarianAssigner`` matches one image of one decoder layer per call, so a 6-layer
decoder with batch size 8 pays 48 device-to-host synchronizations per step. Here the costs of all
layers and all images come out of a few batched tensor ops, cross one device-to-host copy (the
one host wait: SciPy solves on the host), are solved per (layer, image) by
``scipy.optimize.linear_sum_assignment``, and the indices go back in one host-to-device copy that
the host does not wait for.
"""
from typing import List, NamedTuple, Sequence, Tuple, Union

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from detr_plugin.registry import TASK_UTILS, build_in_scope
from .match_costs import MatchCost

# Stands in for NaN / +inf costs (and its negative for -inf) so that scipy never sees a
# non-finite value; real weighted costs are O(10).
LARGE_COST = 1e8


class Matches(NamedTuple):
    """Result of :meth:`HungarianAssigner.match`, with L decoder layers, bs images, Q queries.

    ``pairs[l][b] = (query_idx, gt_idx)``: LongTensors of length min(Q, G_b), sorted by query_idx,
    where gt_idx indexes image b's own gts. ``pred_index`` and ``gt_index`` hold the same matches
    flattened for loss computation without Python loops, ordered by layer, then image, then query:

    * ``pred_index`` (M,): index into the (L, bs, Q) prediction grid flattened,
      i.e. ``(l * bs + b) * Q + query_idx``;
    * ``gt_index`` (M,): index into the batch's concatenated gts, ``torch.cat(gt_labels)``,
      i.e. ``sum(G_0 .. G_{b-1}) + gt_idx``.

    M = L * sum_b min(Q, G_b); every layer has M // L matches and ``pred_index // (bs * Q)`` is the
    layer of each match. Typical use in a head::

        matched_boxes = pred_boxes.flatten(0, 2)[m.pred_index]         # (M, 4)
        target_boxes = torch.cat(gt_boxes)[m.gt_index]                  # (M, 4)
        labels = pred_logits.new_full((L * bs * Q,), num_classes, dtype=torch.long)
        labels[m.pred_index] = torch.cat(gt_labels)[m.gt_index]         # no-object elsewhere
    """
    pairs: List[List[Tuple[Tensor, Tensor]]]
    pred_index: Tensor
    gt_index: Tensor


@TASK_UTILS.register_module()
class HungarianAssigner:
    """Minimum-cost one-to-one matching of queries to gts, batched over decoder layers and images.

    Args:
        match_costs: configs (built from ``TASK_UTILS``) or instances of match costs, see
            :mod:`.match_costs`; the matching cost is their sum. A single one may be given bare.
    """

    def __init__(self, match_costs: Union[dict, MatchCost, Sequence[Union[dict, MatchCost]]]):
        if isinstance(match_costs, dict) or callable(match_costs):
            match_costs = [match_costs]
        if len(match_costs) == 0:
            raise ValueError('match_costs must name at least one cost')
        # mmdet registers costs of the same names with another call signature: build ours even
        # when the current default scope is another package's
        self.match_costs = [build_in_scope(TASK_UTILS, c) if isinstance(c, dict) else c
                            for c in match_costs]
        for cost in self.match_costs:
            if not callable(cost):
                raise TypeError(f'match_costs entries must be configs or callables, got {cost!r}')

    def assign(self, pred_logits: Tensor, pred_boxes: Tensor, gt_labels: Sequence[Tensor],
               gt_boxes: Sequence[Tensor]) -> List[List[Tuple[Tensor, Tensor]]]:
        """Match every layer's queries to each image's gts; see :meth:`match` for the arguments.

        Returns:
            ``matches[l][b] = (query_idx, gt_idx)``: LongTensors on the predictions' device,
            length min(Q, G_b), sorted by query_idx.
        """
        return self.match(pred_logits, pred_boxes, gt_labels, gt_boxes).pairs

    def match(self, pred_logits: Tensor, pred_boxes: Tensor, gt_labels: Sequence[Tensor],
              gt_boxes: Sequence[Tensor]) -> Matches:
        """Match every layer's queries to each image's gts, with one host wait (the copy of the
        costs).

        Args:
            pred_logits: (L, bs, Q, K) raw class logits of L decoder layers (L may be 1).
            pred_boxes: (L, bs, Q, 4) cxcywh, normalized.
            gt_labels: bs tensors (G_b,), long.
            gt_boxes: bs tensors (G_b, 4) cxcywh, normalized; G_b may be 0.

        Returns:
            :class:`Matches`, all tensors on the predictions' device. Costs are computed
            without gradient.
        """
        return self.match_sets([(pred_logits, pred_boxes, gt_labels, gt_boxes)])[0]

    @torch.no_grad()
    def match_sets(self, sets: Sequence[Tuple[Tensor, Tensor, Sequence[Tensor], Sequence[Tensor]]]
                   ) -> List[Matches]:
        """:meth:`match` of several ``(pred_logits, pred_boxes, gt_labels, gt_boxes)`` sets (e.g.
        the decoder layers against the gts' classes and an encoder against one class), the costs
        of them all in one device-to-host copy: one host wait."""
        num_gts = [_check_inputs(*s) for s in sets]
        costs = [self._image_cost_blocks(*s, n) if s[0].shape[2] * sum(n)
                 else s[0].new_zeros(0, dtype=torch.float32)  # nothing to solve
                 for s, n in zip(sets, num_gts)]
        lengths = [len(c) for c in costs]
        host_costs = (torch.cat(costs).cpu().numpy() if sum(lengths)  # the one D2H copy
                      else np.zeros(0, dtype=np.float32))
        starts = np.cumsum([0] + lengths)
        return [self._matches(host_costs[starts[i]:starts[i + 1]], pred_logits.shape[:3], n,
                              pred_logits.device)
                for i, ((pred_logits, *_), n) in enumerate(zip(sets, num_gts))]

    @staticmethod
    def _matches(host_costs: np.ndarray, grid: Tuple[int, int, int], num_gts: List[int],
                 device: torch.device) -> Matches:
        """Solves one set's cost blocks; ``grid``: (L, bs, Q)."""
        num_layers, batch_size, num_queries = grid
        host_indices, sizes = _solve(host_costs, num_layers, num_queries, num_gts)
        # the one H2D copy; the host does not wait for it (pageable memory is staged at once)
        indices = torch.from_numpy(host_indices).to(device, non_blocking=True)
        chunks = indices.split(sizes, dim=1)  # views, (4, min(Q, G_b)) per (layer, image)
        pairs = [[(chunk[0], chunk[1]) for chunk in chunks[l * batch_size:(l + 1) * batch_size]]
                 for l in range(num_layers)]
        return Matches(pairs, indices[2], indices[3])

    def _image_cost_blocks(self, pred_logits: Tensor, pred_boxes: Tensor,
                           gt_labels: Sequence[Tensor], gt_boxes: Sequence[Tensor],
                           num_gts: List[int]) -> Tensor:
        """Each image's cost block against its own gts, flattened and concatenated.

        Returns:
            (L * Q * sum(G_b),) float32, image b's (L, Q, G_b) block after image b-1's, with
            non-finite costs replaced by +-LARGE_COST.
        """
        all_labels = torch.cat(list(gt_labels))  # (G_total,)
        all_boxes = torch.cat(list(gt_boxes))  # (G_total, 4)
        expected_shape = (*pred_logits.shape[:3], all_labels.shape[0])
        cost = 0
        for match_cost in self.match_costs:
            term = match_cost(pred_logits, pred_boxes, all_labels, all_boxes)  # (L, bs, Q, G_total)
            if tuple(term.shape) != expected_shape:
                raise ValueError(f'{match_cost!r} returned shape {tuple(term.shape)}, '
                                 f'expected {expected_shape}')
            cost = cost + term
        # image b's columns against image b's queries only: views, then one concatenation
        blocks = [cols[:, b].reshape(-1) for b, cols in enumerate(cost.split(num_gts, dim=-1))]
        flat = torch.cat(blocks).float()
        return torch.nan_to_num(flat, nan=LARGE_COST, posinf=LARGE_COST, neginf=-LARGE_COST)


def _check_inputs(pred_logits: Tensor, pred_boxes: Tensor, gt_labels: Sequence[Tensor],
                  gt_boxes: Sequence[Tensor]) -> List[int]:
    """Raise on malformed inputs; return the number of gts of each image."""
    if not isinstance(pred_logits, Tensor) or not isinstance(pred_boxes, Tensor):
        raise TypeError('pred_logits and pred_boxes must be tensors')
    if pred_logits.dim() != 4:
        raise ValueError('pred_logits must be (num_layers, bs, num_queries, num_classes), got shape '
                         f'{tuple(pred_logits.shape)}; use unsqueeze(0) for a single layer')
    if tuple(pred_boxes.shape) != (*pred_logits.shape[:3], 4):
        raise ValueError(f'pred_boxes must be {(*pred_logits.shape[:3], 4)} to match pred_logits, '
                         f'got {tuple(pred_boxes.shape)}')
    batch_size = pred_logits.shape[1]
    if len(gt_labels) != batch_size or len(gt_boxes) != batch_size:
        raise ValueError(f'gt_labels and gt_boxes must hold one tensor per image ({batch_size}), '
                         f'got {len(gt_labels)} and {len(gt_boxes)}')
    num_gts = []
    for b, (labels, boxes) in enumerate(zip(gt_labels, gt_boxes)):
        if labels.dim() != 1 or labels.is_floating_point():
            raise ValueError(f'gt_labels[{b}] must be a 1-D integer tensor, got shape '
                             f'{tuple(labels.shape)} and dtype {labels.dtype}')
        if tuple(boxes.shape) != (labels.shape[0], 4):
            raise ValueError(f'gt_boxes[{b}] must be ({labels.shape[0]}, 4) to match '
                             f'gt_labels[{b}], got {tuple(boxes.shape)}')
        num_gts.append(labels.shape[0])
    return num_gts


def _solve(host_costs: np.ndarray, num_layers: int, num_queries: int,
           num_gts: List[int]) -> Tuple[np.ndarray, List[int]]:
    """Run the Hungarian algorithm per (layer, image) on the host.

    Args:
        host_costs: the flat cost blocks of ``HungarianAssigner._image_cost_blocks``.

    Returns:
        (4, M) int64 rows ``query_idx, gt_idx, pred_index, gt_index`` (see :class:`Matches`),
        ordered by layer, then image, then query; and the match count of each (layer, image)
        in that order.
    """
    batch_size = len(num_gts)
    block_starts = np.cumsum([0] + [num_layers * num_queries * g for g in num_gts])
    gt_starts = np.cumsum([0] + num_gts)
    blocks = [host_costs[block_starts[b]:block_starts[b + 1]].reshape(num_layers, num_queries, g)
              for b, g in enumerate(num_gts)]  # (L, Q, G_b) each
    columns, sizes = [], []
    for layer in range(num_layers):
        for b in range(batch_size):
            query_idx, gt_idx = linear_sum_assignment(blocks[b][layer])  # sorted by query_idx
            pred_index = (layer * batch_size + b) * num_queries + query_idx
            columns.append(np.stack([query_idx, gt_idx, pred_index, gt_starts[b] + gt_idx]))
            sizes.append(len(query_idx))
    indices = np.concatenate(columns, axis=1) if columns else np.zeros((4, 0))
    return indices.astype(np.int64), sizes
