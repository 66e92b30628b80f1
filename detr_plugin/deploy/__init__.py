from .end2end import End2EndDetector

__all__ = ['End2EndDetector']
