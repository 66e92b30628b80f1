from .end2end import End2EndDetector
from .fuse import fuse_for_inference

__all__ = ['End2EndDetector', 'fuse_for_inference']
