from .flat_cosine import FlatCosineLR

__all__ = ['FlatCosineLR']
