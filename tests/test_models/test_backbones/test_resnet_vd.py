"""ResNetVd (RT-DETR's PResNet layout) and FrozenBatchNorm2d."""
import torch
import torch.nn.functional as F
from mmdet.models.backbones import ResNetV1d
from torch import nn

from detr_plugin.models.backbones import ResNetVd
from detr_plugin.models.layers import FrozenBatchNorm2d
from detr_plugin.utils import register_all_modules

register_all_modules()


def test_basic_block_stage1_gets_a_projection_shortcut():
    net = ResNetVd(depth=18, out_indices=(1, 2, 3))
    down = net.layer1[0].downsample
    assert isinstance(down[0], nn.Identity)
    assert down[1].kernel_size == (1, 1) and down[1].stride == (1, 1)
    assert (down[1].in_channels, down[1].out_channels) == (64, 64)
    assert net.layer1[1].downsample is None
    # the block uses it: zeroing the projection's BN scale removes the shortcut
    block = net.layer1[0].eval()
    x = torch.randn(1, 64, 8, 8)
    nn.init.zeros_(down[2].weight)
    nn.init.zeros_(down[2].bias)
    main = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
    torch.testing.assert_close(block(x), F.relu(main))
    outs = net(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]


def test_bottleneck_depths_keep_resnet_v1d_layout():
    ours = ResNetVd(depth=50, out_indices=(1, 2, 3)).state_dict()
    theirs = ResNetV1d(depth=50, out_indices=(1, 2, 3)).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_frozen_batch_norm_formula_and_loading():
    bn = FrozenBatchNorm2d(3, eps=1e-3)
    state = dict(weight=torch.tensor([1., 2., .5]), bias=torch.tensor([0., 1., -1.]),
                 running_mean=torch.tensor([.1, -.2, 3.]), running_var=torch.tensor([1., 4., .25]),
                 num_batches_tracked=torch.tensor(7))  # mmdet BatchNorm layout loads
    bn.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 4, 4)
    expected = torch.stack([(x[:, c] - state['running_mean'][c]) /
                            (state['running_var'][c] + 1e-3) ** 0.5 * state['weight'][c] +
                            state['bias'][c] for c in range(3)], 1)
    bn.train()
    torch.testing.assert_close(bn(x), expected)
    assert list(bn.parameters()) == []
    # as a backbone norm: named like BatchNorm, never updated by training
    net = ResNetVd(depth=18, norm_cfg=dict(type='FrozenBatchNorm2d'), out_indices=(3, ))
    assert isinstance(net.layer1[0].bn1, FrozenBatchNorm2d)
    before = net.layer1[0].bn1.running_mean.clone()
    net.train()
    net(torch.randn(2, 3, 32, 32))
    assert torch.equal(net.layer1[0].bn1.running_mean, before)
