"""ResNet with torchvision's stride-to-dilation rule, as DETR-DC5's checkpoints were trained."""
from mmdet.models.backbones import ResNet

from detr_plugin.registry import MODELS


@MODELS.register_module()
class DilatedResNet(ResNet):
    """mmdet's ResNet where a stage that trades its stride for dilation (``strides`` 1 with
    ``dilations`` > 1) keeps the previous stage's dilation in its first block.

    That is torchvision's ``replace_stride_with_dilation``, which DETR-DC5 uses: the first block
    of the dilated stage 4 has a dilation-1 3x3 convolution, its other blocks dilation 2. mmdet's
    ``ResLayer`` dilates every block, so a converted DC5 checkpoint would load but compute other
    features. Same parameters as ``ResNet``; only the first block's 3x3 convolution differs.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        previous = 1
        for name, stride, dilation in zip(self.res_layers, self.strides, self.dilations):
            if stride == 1 and dilation > 1:
                block = getattr(self, name)[0]
                conv = block.conv2 if hasattr(block, 'conv3') else block.conv1  # the 3x3 conv
                conv.dilation, conv.padding = (previous, previous), (previous, previous)
            previous = dilation
