"""DEIM's matchability-aware loss (MAL; Huang et al. 2025, Sec. 3.3, Eq. 4).

Like RT-DETR's varifocal loss (:mod:`.varifocal_loss`) a binary cross-entropy on every
(query, class) logit, but the matched class's soft target is ``IoU ** gamma`` and its weight is 1
(not the IoU), so low-IoU matches still get a full-strength, gently lowered target; other classes
have target 0 and weight ``alpha * p ** gamma`` (alpha = 1 unless given; DEIM leaves it unset and
uses gamma = 1.5). The head divides the summed loss by the number of gt boxes.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from detr_plugin.registry import MODELS
from .varifocal_loss import IoUTargetClassificationLoss


def matchability_aware_loss(logits: Tensor, labels: Tensor, ious: Tensor, gamma: float = 1.5,
                            alpha: Optional[float] = None) -> Tensor:
    """Elementwise loss.

    Args:
        logits: (N, K) class logits.
        labels: (N,) long in [0, K]; K means "no object".
        ious: (N,) IoU of each query's box with its matched gt (ignored where labels == K),
            no gradient.
        gamma: exponent of the target IoU and of the negatives' probability.
        alpha: weight of the negative terms; None means 1.
    Returns:
        (N, K) loss of every logit.
    """
    # the matched class, none where labels == K (selected, not multiplied by a one-hot)
    positive = labels[..., None] == torch.arange(logits.shape[-1], device=labels.device)  # (N, K)
    target = torch.where(positive, ious.detach()[..., None].to(logits.dtype).pow(gamma), 0.0)
    negative_weight = logits.detach().sigmoid().pow(gamma)
    if alpha is not None:
        negative_weight = alpha * negative_weight
    weight = torch.where(positive, 1.0, negative_weight)
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction='none')


@MODELS.register_module()
class MatchabilityAwareLoss(IoUTargetClassificationLoss):
    """``loss_weight * sum(matchability_aware_loss) / avg_factor`` (``reduction='sum'``).

    Args:
        gamma: see :func:`matchability_aware_loss` (1.5 in DEIM).
        alpha: weight of the negative terms; None (DEIM's setting) means 1.
        loss_weight / reduction: see :class:`IoUTargetClassificationLoss`.
    """
    name = 'matchability_aware'

    def __init__(self, gamma: float = 1.5, alpha: Optional[float] = None,
                 loss_weight: float = 1.0, reduction: str = 'sum') -> None:
        super().__init__(loss_weight, reduction)
        self.gamma = gamma
        self.alpha = alpha

    def elementwise(self, logits: Tensor, labels: Tensor, ious: Tensor) -> Tensor:
        return matchability_aware_loss(logits, labels, ious, self.gamma, self.alpha)
