from .dilated_resnet import DilatedResNet
from .resnet_vd import ResNetVd

__all__ = ['DilatedResNet', 'ResNetVd']
