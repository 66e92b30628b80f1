"""mmdet's ``RandomFlip`` with the flipped image written out by OpenCV."""
import cv2
import numpy as np
from mmdet.datasets.transforms import RandomFlip

from detr_plugin.registry import TRANSFORMS

CV2_FLIP_CODES = {'horizontal': 1, 'vertical': 0, 'diagonal': -1}
CV2_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


@TRANSFORMS.register_module()
class ContiguousRandomFlip(RandomFlip):
    """``RandomFlip`` whose flipped image is a contiguous array written by ``cv2.flip``.

    mmdet flips with ``np.flip``, a view with a negative stride; OpenCV cannot read such a view,
    so the next OpenCV call (``Resize``) first has numpy copy it element by element, which for a
    zoomed-out float32 canvas costs several times ``cv2.flip``'s copy. Same arguments, random
    draws, boxes and pixel values as ``RandomFlip`` (only the memory layout differs).
    """

    def _flip(self, results: dict) -> None:
        img = results['img']
        super()._flip(results)
        if img.dtype.type in CV2_DTYPES and img.ndim in (2, 3) and img.shape[-1] <= 4:
            flipped = cv2.flip(img, CV2_FLIP_CODES[results['flip_direction']])
            results['img'] = flipped.reshape(img.shape)  # OpenCV drops a trailing channel of 1
