from .detr_head import DETRHead

__all__ = ['DETRHead']
from .deformable_detr_head import DeformableDETRHead  # noqa: E402

__all__ += ['DeformableDETRHead']
from .rtdetr_head import RTDETRHead  # noqa: E402

__all__ += ['RTDETRHead']
from .dfine_head import DFINEHead  # noqa: E402

__all__ += ['DFINEHead']
