"""mmdet's ``Expand`` (zoom out) with a canvas the operating system zeroes on demand."""
import numpy as np
from mmdet.datasets.transforms import Expand

from detr_plugin.registry import TRANSFORMS


@TRANSFORMS.register_module()
class ZeroFillExpand(Expand):
    """``Expand`` that allocates a zero canvas with ``np.zeros`` instead of filling it.

    With a fill of 0 (``mean=[0, 0, 0]``, as in the RT-DETR recipe) ``np.zeros`` takes pages that
    the operating system zeroes only when first touched, so the canvas parts that a later crop
    drops or the resize never reads cost nothing; mmdet writes the whole canvas (up to 16 times
    the image, in float32 after ``PhotoMetricDistortion``). Same arguments, same random draws and
    the same output as ``Expand`` bit for bit; any other fill, masks or segmentation maps go
    through ``Expand`` itself.
    """

    def transform(self, results: dict) -> dict:
        if (np.any(np.asarray(self.mean) != 0) or results.get('gt_masks') is not None
                or results.get('gt_seg_map') is not None):
            return super().transform(results)
        if self._random_prob() > self.prob:
            return results
        img = results['img']
        h, w, c = img.shape
        ratio = self._random_ratio()
        canvas = np.zeros((int(h * ratio), int(w * ratio), c), img.dtype)
        left, top = self._random_left_top(ratio, h, w)
        canvas[top:top + h, left:left + w] = img
        results['img'] = canvas
        results['img_shape'] = canvas.shape[:2]
        if results.get('gt_bboxes') is not None:
            results['gt_bboxes'].translate_([left, top])
        return results
