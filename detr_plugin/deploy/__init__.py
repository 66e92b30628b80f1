from .end2end import End2EndDetector
from .fuse import fuse_for_inference
from .precision import store_weights_for_autocast

__all__ = ['End2EndDetector', 'fuse_for_inference', 'store_weights_for_autocast']
