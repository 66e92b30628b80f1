"""Pairwise matching costs between predictions and ground truths, batched over any leading dims.

Every cost is called as ``cost(pred_logits, pred_boxes, gt_labels, gt_boxes)`` with

* ``pred_logits``: (..., Q, K) raw class logits (K includes the no-object column for DETR's softmax),
* ``pred_boxes``: (..., Q, 4) cxcywh, normalized to [0, 1] by the image size,
* ``gt_labels``: (G,) long, ``gt_boxes``: (G, 4) cxcywh, normalized,

and returns ``weight * cost`` of shape (..., Q, G): lower is a better match. The leading dims let the
Hungarian assigner score all decoder layers and all images of a batch in one call. Each cost reads
only the inputs it needs; the others may be anything (e.g. ``None``).
"""
import torch
from torch import Tensor

from detr_plugin.registry import TASK_UTILS
from .box_overlaps import box_overlaps
from .box_transforms import cxcywh_to_xyxy


def _at_least_float32(pred_boxes: Tensor, gt_boxes: Tensor) -> tuple:
    """Cast both box sets to a common dtype of at least float32.

    Box geometry in half precision loses the small differences that decide a match, and
    ``torch.cdist`` has no half-precision CPU kernel.
    """
    dtype = torch.promote_types(torch.promote_types(pred_boxes.dtype, gt_boxes.dtype),
                                torch.float32)
    return pred_boxes.to(dtype), gt_boxes.to(dtype)


class MatchCost:
    """Base of the matching costs: scales the unweighted :meth:`cost` by ``weight``.

    Subclasses implement :meth:`cost` with the call signature described in the module docstring.
    """

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = float(weight)

    def __call__(self, pred_logits: Tensor, pred_boxes: Tensor, gt_labels: Tensor,
                 gt_boxes: Tensor) -> Tensor:
        """Return ``weight * cost``, (..., Q, G)."""
        return self.weight * self.cost(pred_logits, pred_boxes, gt_labels, gt_boxes)

    def cost(self, pred_logits: Tensor, pred_boxes: Tensor, gt_labels: Tensor,
             gt_boxes: Tensor) -> Tensor:
        """Unweighted cost, (..., Q, G)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f'{type(self).__name__}(weight={self.weight})'


@TASK_UTILS.register_module()
class ClassificationCost(MatchCost):
    """DETR's class cost: minus the softmax probability of the gt class.

    The softmax runs over all K logits, no-object column included, as in DETR.
    """

    def cost(self, pred_logits, pred_boxes, gt_labels, gt_boxes) -> Tensor:
        probs = pred_logits.softmax(-1)  # (..., Q, K)
        return -probs[..., gt_labels]  # (..., Q, G)


@TASK_UTILS.register_module()
class FocalLossCost(MatchCost):
    """Focal-loss class cost of Deformable DETR / RT-DETR on sigmoid probabilities.

    With p the sigmoid probability of the gt class, the cost is the focal loss of calling the pair
    positive minus that of calling it negative:
    ``alpha * (1 - p)^gamma * -log(p + eps) - (1 - alpha) * p^gamma * -log(1 - p + eps)``.
    """

    def __init__(self, weight: float = 1.0, alpha: float = 0.25, gamma: float = 2.0,
                 eps: float = 1e-8) -> None:
        super().__init__(weight)
        self.alpha = alpha
        self.gamma = gamma
        self.eps = eps

    def cost(self, pred_logits, pred_boxes, gt_labels, gt_boxes) -> Tensor:
        p = pred_logits[..., gt_labels].sigmoid()  # (..., Q, G), sigmoid is elementwise
        pos = self.alpha * (1 - p).pow(self.gamma) * -(p + self.eps).log()
        neg = (1 - self.alpha) * p.pow(self.gamma) * -(1 - p + self.eps).log()
        return pos - neg

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(weight={self.weight}, alpha={self.alpha}, '
                f'gamma={self.gamma}, eps={self.eps})')


@TASK_UTILS.register_module()
class BBoxL1Cost(MatchCost):
    """L1 distance between boxes in normalized cxcywh."""

    def cost(self, pred_logits, pred_boxes, gt_labels, gt_boxes) -> Tensor:
        lead, num_queries = pred_boxes.shape[:-2], pred_boxes.shape[-2]
        pred_boxes, gt_boxes = _at_least_float32(pred_boxes, gt_boxes)
        dist = torch.cdist(pred_boxes.reshape(-1, 4), gt_boxes, p=1)  # (prod(...) * Q, G)
        return dist.reshape(*lead, num_queries, gt_boxes.shape[0])


@TASK_UTILS.register_module()
class IoUCost(MatchCost):
    """Minus the GIoU (``iou_mode='giou'``) or IoU (``iou_mode='iou'``) of the boxes in xyxy.

    :func:`box_overlaps` (mmdet's ``bbox_overlaps`` without its host wait) clamps union and
    enclosing area to ``eps``, so zero-width or zero-height boxes give a finite cost instead of
    NaN.
    """

    def __init__(self, weight: float = 1.0, iou_mode: str = 'giou') -> None:
        super().__init__(weight)
        if iou_mode not in ('iou', 'giou'):
            raise ValueError(f"iou_mode must be 'iou' or 'giou', got {iou_mode!r}")
        self.iou_mode = iou_mode

    def cost(self, pred_logits, pred_boxes, gt_labels, gt_boxes) -> Tensor:
        lead, num_queries = pred_boxes.shape[:-2], pred_boxes.shape[-2]
        pred_boxes, gt_boxes = _at_least_float32(pred_boxes, gt_boxes)
        pred_xyxy = cxcywh_to_xyxy(pred_boxes.reshape(-1, 4))  # (prod(...) * Q, 4)
        gt_xyxy = cxcywh_to_xyxy(gt_boxes)  # (G, 4)
        overlaps = box_overlaps(pred_xyxy, gt_xyxy, mode=self.iou_mode)  # (prod(...) * Q, G)
        return -overlaps.reshape(*lead, num_queries, gt_boxes.shape[0])

    def __repr__(self) -> str:
        return f'{type(self).__name__}(weight={self.weight}, iou_mode={self.iou_mode!r})'
