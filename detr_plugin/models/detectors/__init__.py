from .detr import DETR

__all__ = ['DETR']
from .deformable_detr import DeformableDETR  # noqa: E402

__all__ += ['DeformableDETR']
from .rtdetr import RTDETR  # noqa: E402

__all__ += ['RTDETR']
