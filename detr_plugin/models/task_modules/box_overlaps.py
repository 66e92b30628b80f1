"""IoU and GIoU of xyxy boxes, as mmdet's ``bbox_overlaps`` computes them, without a host wait.

mmdet's version makes its ``eps`` floor with ``new_tensor``: a blocking host-to-device copy, so on
CUDA every call waits for the GPU to finish all queued work. Here the floor is a fill on the
boxes' device. The arithmetic is the same, op for op, so values and gradients are bitwise equal
(tested against mmdet's).
"""
import torch
from torch import Tensor


def box_overlaps(boxes1: Tensor, boxes2: Tensor, mode: str = 'iou', is_aligned: bool = False,
                 eps: float = 1e-6) -> Tensor:
    """IoU (``mode='iou'``) or GIoU (``'giou'``) of xyxy boxes, in float32 or float64.

    Args:
        boxes1: (..., N, 4); boxes2: (..., M, 4), M = N when ``is_aligned``.
        eps: floor of the union and enclosing areas (zero-area boxes give a finite value).

    Returns:
        (..., N) of each aligned pair, else (..., N, M) of every pair.
    """
    if mode not in ('iou', 'giou'):
        raise ValueError(f"box_overlaps: mode must be 'iou' or 'giou', got {mode!r}")
    if is_aligned and boxes1.shape[-2] != boxes2.shape[-2]:
        raise ValueError(f'box_overlaps: aligned boxes need equal counts, got '
                         f'{tuple(boxes1.shape)} and {tuple(boxes2.shape)}')
    if not is_aligned:  # every pair: (..., N, 1, 4) against (..., 1, M, 4)
        boxes1, boxes2 = boxes1[..., :, None, :], boxes2[..., None, :, :]
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    inter_wh = (torch.min(boxes1[..., 2:], boxes2[..., 2:])
                - torch.max(boxes1[..., :2], boxes2[..., :2])).clamp(min=0)
    overlap = inter_wh[..., 0] * inter_wh[..., 1]
    floor = torch.full((1,), eps, dtype=overlap.dtype, device=overlap.device)
    union = torch.max(area1 + area2 - overlap, floor)
    ious = overlap / union
    if mode == 'iou':
        return ious
    enclose_wh = (torch.max(boxes1[..., 2:], boxes2[..., 2:])
                  - torch.min(boxes1[..., :2], boxes2[..., :2])).clamp(min=0)
    enclose_area = torch.max(enclose_wh[..., 0] * enclose_wh[..., 1], floor)
    return ious - (enclose_area - union) / enclose_area
