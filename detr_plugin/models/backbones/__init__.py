from .dilated_resnet import DilatedResNet
from .hgnetv2 import HGNetv2
from .resnet_vd import ResNetVd

__all__ = ['DilatedResNet', 'HGNetv2', 'ResNetVd']
