"""RT-DETR's varifocal loss (Zhao et al. 2024, Eq. 6; after VarifocalNet, Zhang et al. 2021).

Binary cross-entropy on every (query, class) logit against a soft target: the IoU of the query's
box with its matched gt for the matched class, 0 elsewhere. Each term is weighted by
``alpha * p^gamma`` off the matched class (down-weighting easy negatives as focal loss does) and by
the target IoU on it. Unlike mmdet's ``VarifocalLoss``, the matched class is a positive even when
its IoU is 0 (its weight is then 0, as in the original), and no normalization by positives is done
here: the head divides by the number of gt boxes.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detr_plugin.registry import MODELS


def varifocal_loss(logits: Tensor, labels: Tensor, ious: Tensor, alpha: float = 0.75,
                   gamma: float = 2.0) -> Tensor:
    """Elementwise loss.

    Args:
        logits: (N, K) class logits.
        labels: (N,) long in [0, K]; K means "no object".
        ious: (N,) target score of each query's label (ignored where labels == K), no gradient.
    Returns:
        (N, K) loss of every logit.
    """
    # the matched class, without F.one_hot's range check (on CPU two reads into Python); none
    # where labels == K. Selecting (not multiplying by a one-hot) gives the same values in fewer ops
    positive = labels[..., None] == torch.arange(logits.shape[-1], device=labels.device)  # (N, K)
    target = torch.where(positive, ious.detach()[..., None].to(logits.dtype), 0.0)
    prob = logits.detach().sigmoid()
    weight = torch.where(positive, target, alpha * prob.pow(gamma))
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction='none')


class IoUTargetClassificationLoss(nn.Module):
    """``loss_weight * reduce(elementwise loss) / avg_factor`` for the classification losses whose
    matched-class target comes from the matched box's IoU (varifocal, matchability-aware);
    subclasses define :meth:`elementwise`.

    Args:
        loss_weight: multiplies the loss.
        reduction: 'none' (elementwise, (N, K)), 'sum' or 'mean' (over all N * K terms).
    """
    name = 'loss'  # names the loss in error messages

    def __init__(self, loss_weight: float = 1.0, reduction: str = 'sum') -> None:
        super().__init__()
        self.loss_weight = loss_weight
        self.reduction = self._check_reduction(reduction)

    def elementwise(self, logits: Tensor, labels: Tensor, ious: Tensor) -> Tensor:
        """logits (N, K), labels (N,) in [0, K], ious (N,) -> (N, K)."""
        raise NotImplementedError

    def forward(self, logits: Tensor, labels: Tensor, ious: Tensor,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        """logits (N, K), labels (N,) in [0, K], ious (N,); see :meth:`elementwise`."""
        if logits.dim() != 2 or labels.shape != logits.shape[:1] or ious.shape != labels.shape:
            raise ValueError(f'{self.name}: expected logits (N, K), labels (N,) and ious (N,), '
                             f'got {tuple(logits.shape)}, {tuple(labels.shape)}, '
                             f'{tuple(ious.shape)}')
        reduction = self._check_reduction(reduction_override or self.reduction)
        loss = self.elementwise(logits, labels, ious)
        if reduction == 'sum':
            loss = loss.sum()
        elif reduction == 'mean':
            loss = loss.mean()
        if avg_factor is not None:
            loss = loss / avg_factor
        return self.loss_weight * loss

    def _check_reduction(self, reduction: str) -> str:
        if reduction not in ('none', 'sum', 'mean'):
            raise ValueError(f"{self.name}: reduction must be 'none', 'sum' or 'mean', got "
                             f"{reduction!r}")
        return reduction


@MODELS.register_module()
class RTDETRVarifocalLoss(IoUTargetClassificationLoss):
    """``loss_weight * sum(varifocal_loss) / avg_factor`` (``reduction='sum'`` then divided).

    Args:
        alpha: weight of the negative terms.
        gamma: focusing exponent of the negative terms.
        loss_weight / reduction: see :class:`IoUTargetClassificationLoss`.
    """
    name = 'varifocal'

    def __init__(self, alpha: float = 0.75, gamma: float = 2.0, loss_weight: float = 1.0,
                 reduction: str = 'sum') -> None:
        super().__init__(loss_weight, reduction)
        self.alpha = alpha
        self.gamma = gamma

    def elementwise(self, logits: Tensor, labels: Tensor, ious: Tensor) -> Tensor:
        return varifocal_loss(logits, labels, ious, self.alpha, self.gamma)
