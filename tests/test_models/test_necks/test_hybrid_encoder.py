"""Hybrid encoder: position embedding by hand, RepVGG block by hand, shapes of every config."""
import math

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config

from detr_plugin.models.layers.csp_rep_layer import CSPRepLayer, RepVggBlock
from detr_plugin.models.necks import HybridEncoder, sincos_position_embedding
from detr_plugin.models.necks.hybrid_encoder import SinCosEmbeddings


def test_sincos_embedding_by_hand():
    h, w, dims, temperature = 2, 3, 8, 10000.
    pos = sincos_position_embedding(h, w, dims, temperature)
    assert pos.shape == (1, 6, 8)
    # the original enumerates a w x h grid (u, v) u-major: token k has u = k // h, v = k % h
    tokens = [(u, v) for u in range(w) for v in range(h)]
    for k, (u, v) in enumerate(tokens):
        expected = []
        for fn, coord in ((math.sin, u), (math.cos, u), (math.sin, v), (math.cos, v)):
            expected += [fn(coord / temperature ** (i / 2)) for i in range(2)]
        torch.testing.assert_close(pos[0, k], torch.tensor(expected))
    with pytest.raises(ValueError, match='divisible by 4'):
        sincos_position_embedding(2, 2, 6)


def test_sincos_frequencies_round_as_the_originals():
    """The original computes 1. / temperature ** (i / quarter) in float32; temperature ** -(...)
    rounds 20 of RT-DETR's 64 frequencies one unit differently (a 1.5e-9 loss difference in
    float64 training, docs/parity.md 'Training trajectory'). Token 1 (u = 1, v = 0) holds
    sin(w_i) in its first quarter."""
    quarter = 64
    omega = 1. / 10000. ** (torch.arange(quarter, dtype=torch.float32) / quarter)  # the original's
    pos = sincos_position_embedding(1, 2, 4 * quarter, 10000.)  # token 1: u = 1, v = 0
    assert torch.equal(pos[0, 1, :quarter], (1.0 * omega).sin())


def test_kept_embeddings_equal_fresh_ones_and_are_reused():
    cache, cpu = SinCosEmbeddings(8, 100.), torch.device('cpu')
    with torch.inference_mode():
        first = cache(2, 3, torch.float32, cpu)
    assert not first.is_inference()  # training may reuse what inference made
    assert torch.equal(first, sincos_position_embedding(2, 3, 8, 100.))
    assert cache(2, 3, torch.float32, cpu) is first
    double = cache(2, 3, torch.float64, cpu)  # the float32 values cast, as the encoder did
    assert double.dtype == torch.float64
    assert torch.equal(double, sincos_position_embedding(2, 3, 8, 100.).double())
    assert cache(3, 2, torch.float32, cpu).shape == (1, 6, 8)
    assert not list(cache.buffers()) and not cache.state_dict()


def test_kept_embeddings_are_the_last_size_asked_for():
    cache, cpu = SinCosEmbeddings(4, size=2), torch.device('cpu')
    first_a, first_b = cache(1, 1, torch.float32, cpu), cache(2, 2, torch.float32, cpu)
    assert cache(1, 1, torch.float32, cpu) is first_a  # a is now the most recently used
    cache(3, 3, torch.float32, cpu)  # drops b
    assert cache(1, 1, torch.float32, cpu) is first_a
    again_b = cache(2, 2, torch.float32, cpu)
    assert again_b is not first_b and torch.equal(again_b, first_b)
    assert len(cache.tensors) == 2


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_encoder_output_and_gradients_with_kept_embeddings(dtype):
    """The encoder against its stages by hand with a freshly computed embedding, bitwise, on the
    first (embedding made) and second (embedding reused) forward."""
    torch.manual_seed(0)
    neck = HybridEncoder(in_channels=[4, 6], embed_dims=8, num_heads=2, ffn_dims=16,
                         encoder_levels=[0, 1], depth_mult=1 / 3).to(dtype)
    feats = [torch.randn(2, c, s, s + 1, dtype=dtype) for c, s in ((4, 4), (6, 2))]

    def by_hand():
        proj = [p(f) for p, f in zip(neck.input_proj, feats)]
        for encoder, level in zip(neck.encoder, neck.encoder_levels):
            bs, c, h, w = proj[level].shape
            pos = sincos_position_embedding(h, w, c).to(dtype)
            tokens = encoder(proj[level].flatten(2).transpose(1, 2), pos, None)
            proj[level] = tokens.transpose(1, 2).reshape(bs, c, h, w).contiguous()
        return neck.cross_scale_fusion(proj)

    for _ in range(2):
        got, expected = neck(feats), by_hand()
        params = list(neck.parameters())
        for out, ref in zip(got, expected):
            assert torch.equal(out, ref)
        grads = torch.autograd.grad(sum(o.square().sum() for o in got), params)
        ref_grads = torch.autograd.grad(sum(o.square().sum() for o in expected), params)
        assert all(torch.equal(g, r) for g, r in zip(grads, ref_grads))
    assert len(neck.position_embeddings.tensors) == 2  # one per encoded level


def bn_eval(x, bn):
    return (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] +
                                                             bn.eps) * \
        bn.weight[:, None, None] + bn.bias[:, None, None]


def test_repvgg_block_and_csp_layer_by_hand():
    torch.manual_seed(0)
    block = RepVggBlock(4, act='silu').eval()
    for bn in (block.conv1.norm, block.conv2.norm):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 5, 5)
    expected = F.silu(bn_eval(F.conv2d(x, block.conv1.conv.weight, padding=1), block.conv1.norm) +
                      bn_eval(F.conv2d(x, block.conv2.conv.weight), block.conv2.norm))
    torch.testing.assert_close(block(x), expected)

    layer = CSPRepLayer(8, 6, num_blocks=2, expansion=0.5, act='silu').eval()
    x = torch.randn(1, 8, 3, 3)
    hidden = layer.bottlenecks[1](layer.bottlenecks[0](layer.conv1(x))) + layer.conv2(x)
    torch.testing.assert_close(layer(x), layer.conv3(hidden))
    assert layer.conv1.conv.out_channels == 3
    assert isinstance(CSPRepLayer(8, 6, expansion=1.0).conv3, torch.nn.Identity)


@pytest.mark.parametrize('config,in_channels,width,blocks,hidden', [
    ('rtdetr_r18vd_8xb2-72e_coco.py', [128, 256, 512], 256, 3, 128),
    ('rtdetr_r34vd_8xb2-72e_coco.py', [128, 256, 512], 256, 3, 128),
    ('rtdetr_r50vd_8xb2-72e_coco.py', [512, 1024, 2048], 256, 3, 256),
    ('rtdetr_r101vd_8xb2-72e_coco.py', [512, 1024, 2048], 384, 3, 384),
])
def test_shapes_of_every_config(config, in_channels, width, blocks, hidden):
    cfg = Config.fromfile(f'configs/rtdetr/{config}').model.neck
    cfg.pop('type')
    neck = HybridEncoder(**cfg)
    assert neck.in_channels == in_channels and neck.embed_dims == width
    assert len(neck.fpn_blocks[0].bottlenecks) == blocks
    assert neck.fpn_blocks[0].conv1.conv.out_channels == hidden
    # an odd width, as a backbone gives it for a 64 x 56 input: 7, then ceil(7 / 2) = 4, then 2
    sizes = [(8, 7), (4, 4), (2, 2)]
    outs = neck([torch.randn(1, c, *size) for c, size in zip(in_channels, sizes)])
    assert [tuple(o.shape) for o in outs] == [(1, width, *size) for size in sizes]


def test_fusion_connects_every_level_to_every_output():
    torch.manual_seed(0)
    neck = HybridEncoder(in_channels=[4, 6, 8], embed_dims=16, num_heads=2, ffn_dims=32,
                         expansion=0.5, depth_mult=1 / 3).eval()
    feats = [torch.randn(1, c, 8 // 2 ** i, 8 // 2 ** i, requires_grad=True)
             for i, c in enumerate([4, 6, 8])]
    outs = neck(feats)
    for out in outs:  # top-down then bottom-up: each output sees all inputs
        grads = torch.autograd.grad(out.sum(), feats, retain_graph=True)
        assert all(g.abs().sum() > 0 for g in grads)


def test_bad_arguments():
    with pytest.raises(ValueError, match='encoder_levels'):
        HybridEncoder(in_channels=[4, 8], encoder_levels=[2])
    with pytest.raises(ValueError, match='feature levels'):
        HybridEncoder(in_channels=[4, 8], embed_dims=8, num_heads=2,
                      encoder_levels=[1])([torch.randn(1, 4, 2, 2)])
