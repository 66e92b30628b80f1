from .mosaic import Mosaic, SkipAfterMosaic
from .random_iou_crop import RandomIoUCrop

__all__ = ['Mosaic', 'RandomIoUCrop', 'SkipAfterMosaic']
