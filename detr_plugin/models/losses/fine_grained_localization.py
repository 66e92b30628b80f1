"""D-FINE's fine-grained localization loss (FGL; Peng et al. 2025, Sec. 3.2, Eq. 5).

Each matched box edge's bin logits are pulled towards its gt offset split between the two
neighbouring bins (:func:`~detr_plugin.models.layers.box_distribution.boxes_to_bins`): a
cross-entropy to the left bin weighted by its interpolation weight plus one to the right bin,
scaled by the IoU of the predicted box with its gt (all four edges share the box's IoU) and summed
over edges, then divided by ``avg_factor`` (the head passes the number of gt boxes, or of the
GO-LSD union matches, as the original does).
"""
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detr_plugin.models.layers.box_distribution import BinTargets
from detr_plugin.registry import MODELS


def fine_grained_localization_loss(corners: Tensor, bins: BinTargets, ious: Tensor,
                                   avg_factor: Optional[Union[float, Tensor]] = None) -> Tensor:
    """Sum over matched edges of ``iou * (w_left * CE(left bin) + w_right * CE(left bin + 1))``,
    for any number of leading (layer) dimensions sharing the same targets.

    Args:
        corners: (..., M, 4 * (reg_max + 1)) bin logits of M matched queries, edges left, top,
            right, bottom.
        bins: targets of the M matched gts, 4 * M entries box-major (as ``boxes_to_bins``).
        ious: (..., M) IoU of each matched predicted box with its gt; no gradient flows through
            it.
        avg_factor: divides the sum when given.
    Returns:
        (...) loss, a scalar for (M, 4 * (reg_max + 1)) corners.
    """
    num_boxes = corners.shape[-2]
    if bins.index.shape != (4 * num_boxes,) or ious.shape != corners.shape[:-1]:
        raise ValueError(f'fine_grained_localization: expected 4 * {num_boxes} bin targets and '
                         f'ious of shape {tuple(corners.shape[:-1])}, got '
                         f'{tuple(bins.index.shape)} and {tuple(ious.shape)}')
    logits = corners.reshape(*corners.shape[:-2], 4 * num_boxes, corners.shape[-1] // 4)
    lead = (1,) * (logits.dim() - 2)
    left = bins.index.long()
    # (2, ..., 4M, 1): the left then the right bin; the two cross-entropies are two
    # log-softmaxes of the same logits (one kernel), as two F.cross_entropy calls would be, so
    # each backpropagates on its own and the logits' gradient is their sum
    targets = torch.stack([left, left + 1]).view(2, *lead, -1, 1).expand(2, *logits.shape[:-1], 1)
    log_prob = F.log_softmax(logits.expand(2, *logits.shape), -1).gather(-1, targets)
    weights = torch.stack([bins.weight_left, bins.weight_right]).view(2, *lead, -1)
    per_bin = -(log_prob.squeeze(-1) * weights)  # (2, ..., 4M) weighted cross-entropies
    per_edge = per_bin.sum(0).unflatten(-1, (num_boxes, 4))  # left + right
    loss = (per_edge * ious.detach().to(per_edge.dtype)[..., None]).flatten(-2).sum(-1)
    return loss if avg_factor is None else loss / avg_factor


@MODELS.register_module()
class FineGrainedLocalizationLoss(nn.Module):
    """``loss_weight * fine_grained_localization_loss(...)`` (0.15 in D-FINE and DEIM)."""

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, corners: Tensor, bins: BinTargets, ious: Tensor,
                avg_factor: Optional[Union[float, Tensor]] = None) -> Tensor:
        """corners (..., M, 4 * (reg_max + 1)), bins 4 * M entries, ious (..., M): see the
        function."""
        return self.loss_weight * fine_grained_localization_loss(corners, bins, ious, avg_factor)
