"""ResNet-vd as RT-DETR uses it (its "PResNet", from PaddleDetection): ResNetV1d whose first block
of *every* stage has a projection shortcut.

mmdet's ResNetV1d already has the deep stem and the average-pool shortcut of the "d" variant; it
only projects a shortcut where the shape changes, so the first block of ResNet-18/34 (64 -> 64
channels, stride 1) keeps an identity shortcut there. RT-DETR's backbone projects it with a 1x1
conv + BN, and its pretrained weights have that conv. Depths 50/101 are unchanged.
"""
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmdet.models.backbones import ResNetV1d
from torch import nn

from detr_plugin.registry import MODELS


@MODELS.register_module()
class ResNetVd(ResNetV1d):
    """``ResNetV1d`` (same arguments) with a projection shortcut in every stage's first block."""

    def make_res_layer(self, **kwargs) -> nn.Module:
        layer = super().make_res_layer(**kwargs)
        first = layer[0]
        if first.downsample is None:  # stride 1 and unchanged width: BasicBlock stage 1
            channels = kwargs['planes'] * kwargs['block'].expansion
            # laid out as mmdet's average-pool shortcuts (pool, conv, norm), whose pool is the
            # identity at stride 1, so that checkpoints map the same way for every depth
            first.downsample = nn.Sequential(
                nn.Identity(),
                build_conv_layer(kwargs['conv_cfg'], kwargs['inplanes'], channels, 1,
                                 bias=False),
                build_norm_layer(kwargs['norm_cfg'], channels)[1])
        return layer
