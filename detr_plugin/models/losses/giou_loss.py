"""The GIoU box loss (Rezatofighi et al., CVPR 2019) of the DETR heads, without a host wait.

Registered under mmdet's name, so ``dict(type='GIoULoss')`` in this package's scope builds it: the
same values as mmdet's ``GIoULoss`` for float32 / float64 boxes (the same arithmetic, tested
bitwise against it), without its ``eps`` made by a blocking host-to-device copy on every call.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from detr_plugin.registry import MODELS
from ..task_modules.box_overlaps import box_overlaps, ious_and_gious


@MODELS.register_module()
class GIoULoss(nn.Module):
    """``loss_weight * reduce(1 - GIoU(pred, target))`` of aligned xyxy boxes.

    Args:
        eps: floor of the union and enclosing areas.
        reduction: 'none' ((n,) per pair), 'mean' or 'sum'.
        loss_weight: multiplies the reduced loss.
    """

    def __init__(self, eps: float = 1e-6, reduction: str = 'mean',
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.eps = eps
        self.reduction = self._check_reduction(reduction)
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        """pred, target: (n, 4) xyxy. With ``avg_factor`` the 'mean' is the sum divided by it
        (plus float32's machine epsilon, as mmdet's)."""
        reduction = self._check_reduction(reduction_override or self.reduction)
        loss = 1 - box_overlaps(pred, target, mode='giou', is_aligned=True, eps=self.eps)
        if avg_factor is not None:
            if reduction == 'sum':
                raise ValueError('GIoULoss: avg_factor cannot be used with reduction="sum"')
            if reduction == 'mean':
                loss = loss.sum() / (avg_factor + torch.finfo(torch.float32).eps)
        elif reduction == 'mean':
            loss = loss.mean()
        elif reduction == 'sum':
            loss = loss.sum()
        return self.loss_weight * loss

    def losses_and_ious(self, pred: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
        """pred, target: (n, 4) xyxy -> (n,) losses (reduction 'none', weighted) and (n,) IoUs
        of the pairs, detached: the GIoU's own IoU term, for IoU-aware class targets."""
        ious, gious = ious_and_gious(pred, target, is_aligned=True, eps=self.eps)
        return self.loss_weight * (1 - gious), ious.detach()

    @staticmethod
    def _check_reduction(reduction: str) -> str:
        if reduction not in ('none', 'mean', 'sum'):
            raise ValueError(f"GIoULoss: reduction must be 'none', 'mean' or 'sum', got "
                             f'{reduction!r}')
        return reduction
