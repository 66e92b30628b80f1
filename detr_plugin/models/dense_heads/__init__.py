from .detr_head import DETRHead

__all__ = ['DETRHead']
from .deformable_detr_head import DeformableDETRHead  # noqa: E402

__all__ += ['DeformableDETRHead']
