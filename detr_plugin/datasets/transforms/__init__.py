from .random_iou_crop import RandomIoUCrop

__all__ = ['RandomIoUCrop']
