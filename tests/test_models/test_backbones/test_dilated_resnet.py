"""DilatedResNet follows torchvision's replace_stride_with_dilation (DETR-DC5): in the dilated
stage the first block's 3x3 convolution keeps dilation 1, the others get 2; keys as ResNet's."""
import torch
from mmdet.models.backbones import ResNet

from detr_plugin.models.backbones import DilatedResNet

DC5 = dict(depth=50, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), out_indices=(3, ),
           init_cfg=None)


def test_first_block_of_the_dilated_stage_keeps_dilation_one():
    net = DilatedResNet(**DC5)
    # torchvision: previous_dilation (1) for block 0, the new dilation (2) for blocks 1 and 2
    assert [b.conv2.dilation for b in net.layer4] == [(1, 1), (2, 2), (2, 2)]
    assert [b.conv2.padding for b in net.layer4] == [(1, 1), (2, 2), (2, 2)]
    assert all(b.conv2.dilation == (1, 1) for layer in (net.layer1, net.layer2, net.layer3)
               for b in layer)
    plain = ResNet(**DC5)
    assert [b.conv2.dilation for b in plain.layer4] == [(2, 2)] * 3  # what mmdet's would do


def test_stride_sixteen_and_resnet_keys():
    net = DilatedResNet(**DC5)
    net.eval()  # mmdet's ResNet.train returns None
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 96))[0]
    assert out.shape == (1, 2048, 4, 6)
    assert list(net.state_dict()) == list(ResNet(**DC5).state_dict())
