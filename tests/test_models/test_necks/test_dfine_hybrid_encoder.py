"""D-FINE's hybrid encoder: the structure of every model size against a table written by hand from
the original's YAML configs, parameter counts measured on the original, its CCFM parts by hand."""
import pytest
import torch
import torch.nn.functional as F

from detr_plugin.models.layers import RepNCSPELAN4, SCDown
from detr_plugin.models.layers.csp_rep_layer import CSPRepLayer
from detr_plugin.models.necks import DFineHybridEncoder, HybridEncoder

# configs/dfine/dfine_hgnetv2_{n,s,m,l,x}_coco.yml (over include/dfine_hgnetv2.yml), by hand:
# size: (HybridEncoder arguments in ours, strides, RepVGG blocks per CSP = round(3 * depth_mult),
#        RepNCSPELAN4 branch width = round(expansion * hidden_dim // 2), parameters)
# The parameter counts were measured on the ORIGINAL HybridEncoder built from those configs
# (tools/model_converters/dfine_encoder_parity_reference.py prints them).
SIZES = dict(
    n=(dict(in_channels=[512, 1024], embed_dims=128, ffn_dims=512, encoder_levels=[1],
            expansion=0.34, depth_mult=0.5), [16, 32], 2, 21, 703_824),
    s=(dict(in_channels=[256, 512, 1024], embed_dims=256, expansion=0.5, depth_mult=0.34),
       [8, 16, 32], 1, 64, 4_021_504),
    m=(dict(in_channels=[384, 768, 1536], embed_dims=256, depth_mult=0.67), [8, 16, 32], 2, 128,
       7_799_040),
    l=(dict(in_channels=[512, 1024, 2048], embed_dims=256), [8, 16, 32], 3, 128, 9_343_232),
    x=(dict(in_channels=[512, 1024, 2048], embed_dims=384, ffn_dims=2048), [8, 16, 32], 3, 192,
       20_700_032),
)


@pytest.mark.parametrize('size', ['n', 's'])
def test_structure_and_shapes_per_size(size):
    cfg, strides, blocks, branch, params = SIZES[size]
    neck = DFineHybridEncoder(**cfg).eval()
    width, levels = cfg['embed_dims'], len(cfg['in_channels'])
    assert sum(p.numel() for p in neck.parameters()) == params
    assert len(neck.encoder) == 1 and neck.encoder_levels == [levels - 1]
    assert len(neck.fpn_blocks) == len(neck.pan_blocks) == levels - 1
    for block in [*neck.fpn_blocks, *neck.pan_blocks]:
        assert isinstance(block, RepNCSPELAN4)
        assert len(block.cv2[0].bottlenecks) == len(block.cv3[0].bottlenecks) == blocks
        assert block.cv2[0].conv1.conv.out_channels == branch
    assert all(isinstance(d, SCDown) for d in neck.downsample_convs)
    assert all(isinstance(c.act, torch.nn.Identity) for c in neck.lateral_convs)
    # a 64 x 64 image: one map per stride
    feats = [torch.randn(1, c, 64 // s, 64 // s) for c, s in zip(cfg['in_channels'], strides)]
    with torch.no_grad():
        outs = neck(feats)
    assert [tuple(o.shape) for o in outs] == [(1, width, 64 // s, 64 // s) for s in strides]


@pytest.mark.parametrize('size', ['m', 'l', 'x'])
def test_parameters_per_size(size):
    cfg, _, blocks, branch, params = SIZES[size]
    neck = DFineHybridEncoder(**cfg)
    assert sum(p.numel() for p in neck.parameters()) == params
    assert len(neck.fpn_blocks[0].cv2[0].bottlenecks) == blocks
    assert neck.pan_blocks[-1].cv3[0].conv1.conv.out_channels == branch


def test_ccfm_by_hand_two_levels():
    """Top-down then bottom-up of a 2-level encoder with the parts called one by one: lateral
    conv-BN without activation, nearest x2, RepNCSPELAN4 of [up, fine]; SCDown of that, then
    RepNCSPELAN4 of [down, lateral output]."""
    torch.manual_seed(0)
    neck = DFineHybridEncoder(in_channels=[4, 6], embed_dims=8, num_heads=2, ffn_dims=16,
                              encoder_levels=[1], expansion=0.5, depth_mult=1 / 3).eval()
    fine, coarse = torch.randn(1, 8, 4, 6), torch.randn(1, 8, 2, 3)
    with torch.no_grad():
        lateral = neck.lateral_convs[0]
        high = lateral.norm(lateral.conv(coarse))  # no activation: negative values stay
        assert (high < 0).any()
        up = high.repeat_interleave(2, 2).repeat_interleave(2, 3)
        inner = neck.fpn_blocks[0](torch.cat([up, fine], 1))
        down = neck.downsample_convs[0](inner)
        expected = [inner, neck.pan_blocks[0](torch.cat([down, high], 1))]
        outs = neck.cross_scale_fusion([fine, coarse])
    for out, exp in zip(outs, expected):
        torch.testing.assert_close(out, exp)


def test_attention_path_is_rt_detrs():
    """Same input projections and AIFI weights -> the same intra-scale output as RT-DETR's."""
    torch.manual_seed(0)
    args = dict(in_channels=[4, 6], embed_dims=8, num_heads=2, ffn_dims=16, encoder_levels=[1])
    dfine, rtdetr = DFineHybridEncoder(**args).eval(), HybridEncoder(**args).eval()
    rtdetr.encoder.load_state_dict(dfine.encoder.state_dict())
    feat = torch.randn(2, 8, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(dfine.intra_scale_interaction(dfine.encoder[0], feat),
                                   rtdetr.intra_scale_interaction(rtdetr.encoder[0], feat))
    assert isinstance(rtdetr.fpn_blocks[0], CSPRepLayer)  # RT-DETR's parts are unchanged


def test_odd_sizes_and_every_level_reaches_every_output():
    torch.manual_seed(0)
    neck = DFineHybridEncoder(in_channels=[4, 6, 8], embed_dims=16, num_heads=2, ffn_dims=32,
                              expansion=0.5, depth_mult=1 / 3).eval()
    sizes = [(8, 7), (4, 4), (2, 2)]  # a 64 x 56 input: 7, then ceil(7 / 2) = 4, then 2
    feats = [torch.randn(1, c, *s, requires_grad=True) for c, s in zip([4, 6, 8], sizes)]
    outs = neck(feats)
    assert [tuple(o.shape[-2:]) for o in outs] == sizes
    for out in outs:
        grads = torch.autograd.grad(out.sum(), feats, retain_graph=True)
        assert all(g.abs().sum() > 0 for g in grads)


def test_nearest_upsampling_matches_the_originals_scale_factor():
    """The original upsamples with scale_factor=2; ours to the finer map's size: the same map."""
    x = torch.randn(1, 3, 4, 5)
    torch.testing.assert_close(F.interpolate(x, size=(8, 10), mode='nearest'),
                               F.interpolate(x, scale_factor=2.0, mode='nearest'))
