"""detr_plugin: the DETR family of end-to-end detectors for MMDetection 3.x.

``import detr_plugin`` checks that mmengine, mmcv and mmdet are in the supported ranges (one-line
ImportError otherwise), registers every component under the scope ``detr_plugin`` and the
``presnet://`` checkpoint scheme (RT-DETR's ImageNet backbones).
"""
from .version import __version__, check_mm_versions

check_mm_versions()

from . import converters, datasets, engine, models, ops  # noqa: E402,F401  (registers modules)
from .utils import register_all_modules  # noqa: E402

__all__ = ['register_all_modules', '__version__']
