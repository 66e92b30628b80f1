"""D-FINE's decoupled distillation focal loss (DDF; Peng et al. 2025, Sec. 3.3, Eq. 6), the
self-distillation half of GO-LSD.

Every earlier decoder layer's edge distributions are distilled from the last layer's:
``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` per edge (T = 5), weighted per query by
the teacher's confidence (its highest class probability) or, at matched queries, by the IoU of the
student's box with its gt. Matched and unmatched edges are averaged separately and mixed with
weights ``sqrt(4 * count * 8 / bs)`` (the factor 8 / bs keeps the mix independent of the per-GPU
batch size), so the few matched queries are not drowned by the many unmatched ones.

The original computes these balance weights in the call for the matched (non-denoising) queries and
reuses them for the denoising queries' call; here they are an explicit argument
(:func:`distillation_balance` on the non-denoising match mask, passed to both calls).
"""
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detr_plugin.registry import MODELS


class DistillationBalance(NamedTuple):
    """Mixing weights of the matched and unmatched means (0-dim float32 tensors)."""
    matched: Tensor    # sqrt(matched edges * 8 / bs)
    unmatched: Tensor  # sqrt(unmatched edges * 8 / bs)


def distillation_balance(matched_mask: Tensor) -> DistillationBalance:
    """Balance weights from a (bs, Q) bool mask of matched queries (4 edges each)."""
    batch_scale = 8 / matched_mask.shape[0]
    matched = 4 * matched_mask.sum()
    unmatched = 4 * matched_mask.numel() - matched
    return DistillationBalance((matched * batch_scale) ** 0.5, (unmatched * batch_scale) ** 0.5)


def decoupled_distillation_loss(corners: Tensor, teacher_corners: Tensor, teacher_logits: Tensor,
                                matched_index: Tensor, matched_ious: Tensor,
                                balance: Optional[DistillationBalance] = None,
                                temperature: float = 5.0) -> Tensor:
    """DDF of the distributions of one or more (leading dims, e.g. layers) students against the
    teacher's.

    Args:
        corners: (..., bs, Q, 4 * (reg_max + 1)) the students' bin logits.
        teacher_corners: (bs, Q, 4 * (reg_max + 1)) the last layer's; no gradient flows into it.
        teacher_logits: (bs, Q, K) the last layer's class logits.
        matched_index: (M,) long, distinct matched queries as indices into the flattened
            (bs * Q) grid, i.e. ``b * Q + query_idx``.
        matched_ious: (..., M) IoU of each student's box at each matched query with its gt.
        balance: mixing weights; None computes them from this call's matches (the original's
            non-denoising call), which the denoising call must then be given.
        temperature: T.
    Returns:
        (...) loss per student; exactly 0 (with a graph) where a student equals the teacher, as
        for the last layer itself (checked on the device: no host wait).
    """
    bs, num_queries, width = teacher_corners.shape
    num_grid, num_matched = bs * num_queries, matched_index.numel()
    lead = corners.shape[:-3]
    teacher_corners = teacher_corners.detach()
    same = (corners == teacher_corners).flatten(-3).all(-1)  # (...)
    # per-query weights: the teacher's confidence, each student's IoU at matched queries
    confidence = teacher_logits.detach().sigmoid().max(-1).values.reshape(-1)  # (bs * Q,)
    weights = confidence.repeat(*lead, 1)
    weights[..., matched_index] = matched_ious.detach().to(weights.dtype)
    matched = torch.zeros(num_grid, dtype=torch.bool, device=corners.device)
    matched.index_fill_(0, matched_index, True)  # a scalar argument, not a host tensor to copy
    if balance is None:
        balance = distillation_balance(matched.reshape(bs, num_queries))

    num_bins = width // 4
    # divided first: the quotient is contiguous, so the per-edge reshape needs no copy
    student = F.log_softmax((corners / temperature).reshape(*lead, -1, num_bins), dim=-1)
    teacher = F.softmax((teacher_corners / temperature).reshape(-1, num_bins), dim=-1)
    kl = F.kl_div(student, teacher.expand_as(student), reduction='none').sum(-1)
    loss = (weights * temperature ** 2)[..., None] * kl.unflatten(-1, (num_grid, 4))
    # the unmatched then the matched queries in ascending order, edge by edge, as a boolean mask
    # would select them, with counts known on the host (no wait for the GPU)
    by_mask = torch.sort(matched.to(torch.uint8), stable=True).indices
    edges = loss.index_select(-2, by_mask).flatten(-2)  # (..., bs * Q * 4)
    unmatched_edges, matched_edges = edges.split([4 * (num_grid - num_matched),
                                                  4 * num_matched], -1)
    matched_mean = matched_edges.mean(-1) if num_matched else 0
    unmatched_mean = unmatched_edges.mean(-1) if num_matched < num_grid else 0
    mixed = ((matched_mean * balance.matched + unmatched_mean * balance.unmatched)
             / (balance.matched + balance.unmatched))
    return mixed.masked_fill(same, 0)


@MODELS.register_module()
class DecoupledDistillationLoss(nn.Module):
    """``loss_weight * decoupled_distillation_loss(...)`` (1.5 in D-FINE and DEIM, T = 5)."""

    def __init__(self, temperature: float = 5.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature
        self.loss_weight = loss_weight

    def forward(self, corners: Tensor, teacher_corners: Tensor, teacher_logits: Tensor,
                matched_index: Tensor, matched_ious: Tensor,
                balance: Optional[DistillationBalance] = None) -> Tensor:
        """See :func:`decoupled_distillation_loss` for shapes."""
        return self.loss_weight * decoupled_distillation_loss(
            corners, teacher_corners, teacher_logits, matched_index, matched_ious, balance,
            self.temperature)
