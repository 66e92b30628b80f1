"""detr_plugin: the DETR family of end-to-end detectors for MMDetection 3.x.

``import detr_plugin`` registers every component under the scope ``detr_plugin``.
"""
from . import datasets, engine, models, ops  # noqa: F401  (registers modules)
from .utils import register_all_modules
from .version import __version__

__all__ = ['register_all_modules', '__version__']
