from .batch_mixup import BatchMixUp
from .batch_multi_scale_resize import BatchMultiScaleResize

__all__ = ['BatchMixUp', 'BatchMultiScaleResize']
