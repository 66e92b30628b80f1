"""SSD's IoU-constrained random crop, with the acceptance rule RT-DETR's recipe uses."""
from typing import Optional, Sequence, Tuple

import numpy as np
from mmcv.transforms import BaseTransform

from detr_plugin.registry import TRANSFORMS

Window = Tuple[int, int, int, int]  # left, top, right, bottom in pixels


@TRANSFORMS.register_module()
class RandomIoUCrop(BaseTransform):
    """Crops a random window that overlaps some object enough (Liu et al., SSD, Sec. 2.2).

    Each attempt draws a minimum IoU from ``sampler_options`` (1.0: keep the image uncropped),
    then tries up to ``trials`` windows of ``min_scale``-``max_scale`` times the image width and
    height with an aspect ratio within ``min_aspect_ratio``-``max_aspect_ratio``. A window is
    accepted when some box has its centre inside it and the best IoU of those boxes with the window
    reaches the drawn minimum. The boxes whose centres lie inside are kept, shifted and clipped to
    the window; the others are dropped with their labels.

    This is the rule of the RT-DETR recipe (torchvision's ``RandomIoUCrop``). mmdet's
    ``MinIoURandomCrop`` instead rejects a window when *any* box overlaps it less than the
    minimum, which rarely succeeds on images with many small objects.

    Required keys: img, gt_bboxes, gt_bboxes_labels (gt_ignore_flags if present).
    Modified keys: img, img_shape, gt_bboxes, gt_bboxes_labels, gt_ignore_flags.

    Args:
        min_scale / max_scale: window side over image side, drawn for width and height apart.
        min_aspect_ratio / max_aspect_ratio: bounds on the window's width / height.
        sampler_options: the minimum IoUs to draw from; 1.0 means no crop.
        trials: windows tried per drawn minimum.
        prob: probability of trying to crop at all.
    """

    def __init__(self,
                 min_scale: float = 0.3,
                 max_scale: float = 1.0,
                 min_aspect_ratio: float = 0.5,
                 max_aspect_ratio: float = 2.0,
                 sampler_options: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
                 trials: int = 40,
                 prob: float = 1.0,
                 max_draws: int = 100) -> None:
        if not 0 < min_scale <= max_scale <= 1:
            raise ValueError(f'need 0 < min_scale <= max_scale <= 1, got {min_scale}, {max_scale}')
        if not 0 <= prob <= 1:
            raise ValueError(f'prob must be in [0, 1], got {prob}')
        self.min_scale, self.max_scale = min_scale, max_scale
        self.min_aspect_ratio, self.max_aspect_ratio = min_aspect_ratio, max_aspect_ratio
        self.sampler_options = tuple(sampler_options)
        self.trials = trials
        self.prob = prob
        self.max_draws = max_draws  # bounds the loop when no option is 1.0 and no window fits

    def transform(self, results: dict) -> dict:
        boxes = results['gt_bboxes']
        if len(boxes) == 0 or np.random.rand() >= self.prob:
            return results
        h, w = results['img'].shape[:2]
        window = self.sample_window(boxes.numpy(), w, h)
        return results if window is None else self.crop(results, window)

    def sample_window(self, boxes: np.ndarray, width: int, height: int) -> Optional[Window]:
        """A window accepted for the (n, 4) xyxy ``boxes``, or None for no crop."""
        for _ in range(self.max_draws):
            min_iou = self.sampler_options[np.random.randint(len(self.sampler_options))]
            if min_iou >= 1.0:
                return None
            for _ in range(self.trials):
                window = self.random_window(width, height)
                if window is not None and self.accepts(window, boxes, min_iou):
                    return window
        return None

    def random_window(self, width: int, height: int) -> Optional[Window]:
        scale = self.min_scale + (self.max_scale - self.min_scale) * np.random.rand(2)
        new_w, new_h = int(width * scale[0]), int(height * scale[1])
        if new_w == 0 or new_h == 0:
            return None
        if not self.min_aspect_ratio <= new_w / new_h <= self.max_aspect_ratio:
            return None
        offset = np.random.rand(2)
        left, top = int((width - new_w) * offset[0]), int((height - new_h) * offset[1])
        return left, top, left + new_w, top + new_h

    @staticmethod
    def centres_inside(window: Window, boxes: np.ndarray) -> np.ndarray:
        """(n,) bool: the box centre lies strictly inside the window."""
        left, top, right, bottom = window
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        return (left < cx) & (cx < right) & (top < cy) & (cy < bottom)

    def accepts(self, window: Window, boxes: np.ndarray, min_iou: float) -> bool:
        inside = self.centres_inside(window, boxes)
        if not inside.any():
            return False
        return window_iou(window, boxes[inside]).max() >= min_iou

    def crop(self, results: dict, window: Window) -> dict:
        """Cuts ``window`` out of the image; keeps the boxes centred in it, shifted and clipped."""
        left, top, right, bottom = window
        keep = self.centres_inside(window, results['gt_bboxes'].numpy())
        img = results['img'][top:bottom, left:right]
        boxes = results['gt_bboxes'][keep]
        boxes.translate_([-left, -top])
        boxes.clip_(img.shape[:2])
        results.update(img=img, img_shape=img.shape[:2], gt_bboxes=boxes,
                       gt_bboxes_labels=results['gt_bboxes_labels'][keep])
        if 'gt_ignore_flags' in results:
            results['gt_ignore_flags'] = results['gt_ignore_flags'][keep]
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(min_scale={self.min_scale}, max_scale={self.max_scale}, '
                f'aspect_ratio=({self.min_aspect_ratio}, {self.max_aspect_ratio}), '
                f'sampler_options={self.sampler_options}, trials={self.trials}, prob={self.prob})')


def window_iou(window: Window, boxes: np.ndarray) -> np.ndarray:
    """(n,) IoU of each xyxy box with the window."""
    left, top, right, bottom = window
    iw = np.clip(np.minimum(boxes[:, 2], right) - np.maximum(boxes[:, 0], left), 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], bottom) - np.maximum(boxes[:, 1], top), 0, None)
    inter = iw * ih
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (areas + (right - left) * (bottom - top) - inter)
