"""HGNetv2 (D-FINE / DEIM backbone) against figures measured from the original
(Peterande/D-FINE src/nn/backbone/hgnetv2.py, run under /work/ref_env) and formulas by hand."""
import importlib.util
import json
import pathlib

import pytest
import torch

from detr_plugin.converters import convert_hgnetv2
from detr_plugin.models.backbones import HGNetv2
from detr_plugin.models.backbones.hgnetv2 import LightConvNormAct
from detr_plugin.models.layers import FrozenBatchNorm2d
from detr_plugin.utils import register_all_modules

register_all_modules()
DATA = pathlib.Path(__file__).resolve().parents[2] / 'data' / 'hgnetv2'

# stage output channels, copied by hand from the original's arch_configs (stage1..stage4 [2])
OUT_CHANNELS = {
    'B0': [64, 256, 512, 1024], 'B1': [64, 256, 512, 1024], 'B2': [96, 384, 768, 1536],
    'B3': [128, 512, 1024, 2048], 'B4': [128, 512, 1024, 2048], 'B5': [128, 512, 1024, 2048],
    'B6': [192, 512, 1024, 2048]}


@pytest.mark.parametrize('arch', sorted(OUT_CHANNELS))
def test_stage_widths_follow_the_original_table(arch):
    with torch.device('meta'):
        net = HGNetv2(arch, out_indices=(0, 1, 2, 3))
    built = [stage.blocks[-1].aggregation.excitation.conv.out_channels for stage in net.stages]
    assert built == OUT_CHANNELS[arch] == net.out_channels
    assert net.strides == [4, 8, 16, 32]


def test_b0_output_shapes_and_strides():
    net = HGNetv2('B0', out_indices=(1, 2, 3)).eval()
    outs = net(torch.rand(2, 3, 32, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 256, 4, 8), (2, 512, 2, 4), (2, 1024, 1, 2)]
    assert net.out_channels == [256, 512, 1024] and net.strides == [8, 16, 32]


def test_b0_odd_input_sizes_round_as_the_original():
    # spatial sizes of the four stages measured from the original B0 on these inputs
    measured = {(50, 70): [(13, 18), (7, 9), (4, 5), (2, 3)],
                (33, 31): [(9, 8), (5, 4), (3, 2), (2, 1)]}
    net = HGNetv2('B0', out_indices=(0, 1, 2, 3)).eval()
    for (h, w), sizes in measured.items():
        assert [tuple(o.shape[2:]) for o in net(torch.rand(1, 3, h, w))] == sizes


@pytest.mark.parametrize('arch,use_lab,norm,expected', [
    # sum(p.numel() for p in model.parameters()) of the original
    # HGNetv2(arch, use_lab=..., freeze_at=-1, freeze_norm=..., pretrained=False), measured with
    # torch 2.14 in /work/ref_env; frozen BatchNorm holds buffers, not parameters
    ('B0', True, 'BN', 1_850_396),  # D-FINE N / S
    ('B0', False, 'BN', 1_850_336),
    ('B2', True, 'BN', 6_026_626),  # M
    ('B4', False, 'FrozenBatchNorm2d', 13_507_680),  # L
    ('B4', False, 'BN', 13_553_376),
    ('B5', False, 'FrozenBatchNorm2d', 33_231_840),  # X
])
def test_parameter_count_equals_the_original(arch, use_lab, norm, expected):
    with torch.device('meta'):
        net = HGNetv2(arch, use_lab=use_lab, norm_cfg=dict(type=norm))
    assert sum(p.numel() for p in net.parameters()) == expected


def test_outputs_equal_the_original_b0_with_weights_from_its_key_names():
    """The original B0 (use_lab, BatchNorm; D-FINE S) with weights drawn from its own key names
    (tests/data/hgnetv2/make_fixtures.py), converted: same outputs as the original gave."""
    spec = importlib.util.spec_from_file_location('make_fixtures', DATA / 'make_fixtures.py')
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    shapes = json.loads((DATA / 'original_b0_use_lab_keys.json').read_text())['shapes']
    expected = torch.load(DATA / 'original_b0_use_lab_outputs.pth', weights_only=True)
    net = HGNetv2('B0', out_indices=(0, 1, 2, 3), use_lab=True).eval()
    net.load_state_dict(convert_hgnetv2(fixtures.keyed_weights(shapes)), strict=True)
    with torch.no_grad():
        outs = net(fixtures.keyed_input())
    torch.testing.assert_close(outs[3], expected['stage3'], atol=1e-5, rtol=1e-4)
    for out, means in zip(outs[:3], expected['channel_means']):
        torch.testing.assert_close(out.mean((0, 2, 3)), means, atol=1e-5, rtol=1e-4)


def test_light_block_and_learnable_affine_match_the_formula():
    """1x1 conv + BN, then depthwise 3x3 conv + BN + ReLU + scale * x + bias, written out with
    loops in float64 on a (1, 2, 4, 4) input."""
    torch.manual_seed(0)
    block = LightConvNormAct(2, 3, 3, dict(type='BN'), use_lab=True).double().eval()
    for bn in (block.pointwise.bn, block.depthwise.bn):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    with torch.no_grad():
        block.depthwise.lab.scale.fill_(1.7)
        block.depthwise.lab.bias.fill_(-0.3)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)

    def bn(y, m):
        return ((y - m.running_mean[:, None, None]) / (m.running_var[:, None, None] + 1e-5).sqrt()
                * m.weight[:, None, None] + m.bias[:, None, None])

    w1 = block.pointwise.conv.weight[:, :, 0, 0]  # (3, 2)
    y = torch.zeros(3, 4, 4, dtype=torch.float64)
    for o in range(3):
        for i in range(2):
            y[o] += w1[o, i] * x[0, i]
    y = bn(y, block.pointwise.bn)
    w2 = block.depthwise.conv.weight[:, 0]  # (3, 3, 3): one filter per channel
    padded = torch.zeros(3, 6, 6, dtype=torch.float64)
    padded[:, 1:5, 1:5] = y
    z = torch.zeros(3, 4, 4, dtype=torch.float64)
    for c in range(3):
        for r in range(4):
            for s in range(4):
                z[c, r, s] = (padded[c, r:r + 3, s:s + 3] * w2[c]).sum()
    expected = 1.7 * bn(z, block.depthwise.bn).clamp(min=0) - 0.3
    with torch.no_grad():
        torch.testing.assert_close(block(x)[0], expected)


def test_stem_pool_and_conv_branch_see_the_bottom_right_padded_map():
    """Stem of width 2: after stem1, both branches see the map padded by one zero row and column
    at the bottom right; the pool is the 2x2 maximum there, and the concatenation puts the pool
    first."""
    net = HGNetv2('B0').eval()
    stem = net.stem
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        s1 = stem.stem1(x)  # (1, 16, 8, 8)
        padded = torch.zeros(1, 16, 9, 9)
        padded[..., :8, :8] = s1
        pooled = torch.stack([torch.stack([padded[..., r:r + 2, c:c + 2].amax((-1, -2))
                                           for c in range(8)], -1) for r in range(8)], -2)
        a = stem.stem2a(padded)  # (1, 8, 8, 8)
        a_padded = torch.zeros(1, 8, 9, 9)
        a_padded[..., :8, :8] = a
        branch = stem.stem2b(a_padded)
        expected = stem.stem4(stem.stem3(torch.cat([pooled, branch], 1)))
        torch.testing.assert_close(stem(x), expected)


def test_frozen_stages_get_no_gradients_and_stay_in_eval():
    # frozen_stages=2 is the original's freeze_at=1 with freeze_stem_only=False: the stem and
    # stages 0 and 1 (measured: the original freezes stem.* and stages.0/1.*)
    net = HGNetv2('B0', out_indices=(3, ), frozen_stages=2, use_lab=True)
    net.train()
    frozen = [net.stem, net.stages[0], net.stages[1]]
    assert all(not m.training for f in frozen for m in f.modules())
    assert all(m.training for s in net.stages[2:] for m in s.modules())
    running = net.stem.stem1.bn.running_mean.clone()
    net(torch.rand(2, 3, 32, 32))[0].sum().backward()
    assert torch.equal(net.stem.stem1.bn.running_mean, running)  # eval: statistics kept
    for name, p in net.named_parameters():
        is_frozen = name.startswith(('stem.', 'stages.0.', 'stages.1.'))
        assert p.requires_grad != is_frozen, name
        assert (p.grad is None) == is_frozen, name


def test_frozen_stem_only_and_frozen_norm_as_the_l_and_x_configs():
    """frozen_stages=0 + FrozenBatchNorm2d: the original's freeze_at=0, freeze_stem_only=True,
    freeze_norm=True (D-FINE L / X); the original freezes 15 parameters of B0's stem with
    use_lab (5 convs, 5 x 2 affines), the norms holding none."""
    net = HGNetv2('B0', frozen_stages=0, use_lab=True,
                  norm_cfg=dict(type='FrozenBatchNorm2d')).train()
    assert sum(not p.requires_grad for p in net.parameters()) == 15
    assert not net.stem.training and net.stages[0].training
    norms = [m for m in net.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) == sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())


def test_no_frozen_stages_trains_everything():
    net = HGNetv2('B0', frozen_stages=-1).train()
    assert all(p.requires_grad for p in net.parameters())
    assert all(m.training for m in net.modules())


def test_bad_arguments_are_one_line_errors():
    for kwargs, match in ((dict(arch='B9'), 'unknown arch'),
                          (dict(arch='B0', out_indices=(4, )), 'out_indices'),
                          (dict(arch='B0', frozen_stages=5), 'frozen_stages')):
        with pytest.raises(ValueError, match=match):
            HGNetv2(**kwargs)

