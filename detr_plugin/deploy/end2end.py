"""A detector as one tensor-in, tensors-out module: for export (ONNX), CUDA graphs and torch.compile."""
from typing import Tuple

import torch
from torch import Tensor, nn


class End2EndDetector(nn.Module):
    """Wraps one of our detectors (DETR, Deformable DETR, RT-DETR(v2), D-FINE, DEIM) in eval mode.

    ``forward(images)`` takes a normalized, unpadded batch (bs, 3, H, W), as the detector's data
    preprocessor makes it, and returns the last decoder layer's detections in the pixel frame of
    that batch:

    - boxes: (bs, k, 4) xyxy pixels, clamped to (W, H)
    - scores: (bs, k) float32
    - labels: (bs, k) int64

    with k the head's ``test_cfg.max_per_img`` (DETR: all queries when larger). There is no data
    sample, no host synchronisation and no data-dependent shape, so the module can be traced,
    exported and captured in a CUDA graph. Results equal the detector's ``predict`` with
    ``rescale=False`` on the same unpadded batch.

    ``channels_last=True`` stores the detector's convolution weights and runs the images in
    channels-last memory layout: on the GPU cuDNN then needs no layout transposes around each
    convolution (a batch-1 RT-DETR R18 graph: 453 kernels instead of 549, docs/benchmarks.md).
    The same numbers, in another layout.
    """

    def __init__(self, detector: nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        for attr in ('_forward', 'bbox_head'):
            if not hasattr(detector, attr):
                raise TypeError(f'{type(detector).__name__} has no {attr}: End2EndDetector needs '
                                'one of detr_plugin\'s detectors')
        self.detector = detector
        self.channels_last = channels_last
        if channels_last:
            detector.to(memory_format=torch.channels_last)
        # the wrapper too: torch.onnx.export ends with train(<mode before>) on the wrapper, which
        # a training wrapper would pass on to the detector
        self.eval()

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f'expected images of shape (bs, 3, H, W), got {tuple(images.shape)}')
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits, boxes = self.detector._forward(images)  # (L, bs, Q, K'), (L, bs, Q, 4) cxcywh
        logits, boxes = logits[-1].float(), boxes[-1].float()
        scores, labels, query = self.detector.bbox_head.scores_and_labels(logits)  # (bs, k) each
        if query is not None:
            boxes = boxes.gather(1, query.unsqueeze(-1).expand(-1, -1, 4))
        h, w = images.shape[-2:]
        # (w, h) filled on the device from Python numbers: no host -> device copy (CUDA graphs)
        size = torch.stack([boxes.new_full((), w), boxes.new_full((), h)])
        centre, half = boxes[..., :2], 0.5 * boxes[..., 2:]
        corners = torch.stack([centre - half, centre + half], -2) * size  # (bs, k, 2, 2)
        return corners.clamp(min=0).minimum(size).flatten(-2), scores, labels
