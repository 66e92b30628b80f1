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
    """DDF of one layer's distributions against the teacher's.

    Args:
        corners: (bs, Q, 4 * (reg_max + 1)) the layer's bin logits.
        teacher_corners: same shape, the last layer's; no gradient flows into it.
        teacher_logits: (bs, Q, K) the last layer's class logits.
        matched_index: (M,) long, distinct matched queries as indices into the flattened
            (bs * Q) grid, i.e. ``b * Q + query_idx``.
        matched_ious: (M,) IoU of the layer's box at each matched query with its gt.
        balance: mixing weights; None computes them from this call's matches (the original's
            non-denoising call), which the denoising call must then be given.
        temperature: T.
    Returns:
        scalar loss; exactly 0 (with a graph) when ``corners`` equals ``teacher_corners``, as for
        the last layer itself.
    """
    if torch.equal(corners, teacher_corners):
        return corners.sum() * 0
    bs, num_queries = corners.shape[:2]
    num_bins = corners.shape[-1] // 4
    weights = teacher_logits.detach().sigmoid().max(-1).values.reshape(-1)  # (bs * Q,)
    weights[matched_index] = matched_ious.detach().to(weights.dtype)
    matched = torch.zeros(bs * num_queries, dtype=torch.bool, device=corners.device)
    matched.index_fill_(0, matched_index, True)  # a scalar argument, not a host tensor to copy
    if balance is None:
        balance = distillation_balance(matched.reshape(bs, num_queries))

    student = F.log_softmax(corners.reshape(-1, num_bins) / temperature, dim=1)
    teacher = F.softmax(teacher_corners.detach().reshape(-1, num_bins) / temperature, dim=1)
    kl = F.kl_div(student, teacher, reduction='none').sum(-1)  # (bs * Q * 4,)
    loss = weights.repeat_interleave(4) * temperature ** 2 * kl
    # the matched and unmatched queries in ascending order, as a boolean mask would select them,
    # with counts known on the host (no wait for the GPU)
    num_matched = matched_index.numel()
    by_mask = torch.sort(matched.to(torch.uint8), stable=True).indices  # unmatched first
    matched_mean = (edge_mean(loss, by_mask[bs * num_queries - num_matched:])
                    if num_matched else 0)
    unmatched_mean = (edge_mean(loss, by_mask[:bs * num_queries - num_matched])
                      if num_matched < bs * num_queries else 0)
    return ((matched_mean * balance.matched + unmatched_mean * balance.unmatched)
            / (balance.matched + balance.unmatched))


def edge_mean(loss: Tensor, queries: Tensor) -> Tensor:
    """Mean of the (bs * Q * 4,) per-edge ``loss`` over the 4 edges of each of ``queries`` (Z,)."""
    edges = (queries[:, None] * 4 + torch.arange(4, device=queries.device)).flatten()
    return loss[edges].mean()


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
