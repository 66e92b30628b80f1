from .resnet_vd import ResNetVd

__all__ = ['ResNetVd']
