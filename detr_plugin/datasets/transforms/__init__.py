from .contiguous_flip import ContiguousRandomFlip
from .mosaic import Mosaic, SkipAfterMosaic
from .random_iou_crop import RandomIoUCrop
from .zero_fill_expand import ZeroFillExpand

__all__ = ['ContiguousRandomFlip', 'Mosaic', 'RandomIoUCrop', 'SkipAfterMosaic',
           'ZeroFillExpand']
