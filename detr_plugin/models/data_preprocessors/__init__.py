from .batch_mixup import BatchMixUp
from .batch_multi_scale_resize import BatchMultiScaleResize
from .detr_data_preprocessor import DETRDataPreprocessor

__all__ = ['BatchMixUp', 'BatchMultiScaleResize', 'DETRDataPreprocessor']
