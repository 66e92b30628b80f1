"""D-FINE's decoder layer and decoder: the gate by hand, attention without projections against the
projected module with identity projections, the layer's composition, input projections, eval_idx
stopping early."""
import pytest
import torch
from mmengine.registry import DefaultScope

from detr_plugin.models.layers.dfine_decoder import DFINEDecoderLayer, GatedFusion
from detr_plugin.models.layers.multi_scale import LevelIndex, flatten_levels
from detr_plugin.ops import MultiScaleDeformableAttention
from detr_plugin.registry import MODELS


def test_gated_fusion_by_hand():
    torch.manual_seed(0)
    gate = GatedFusion(3).double()
    torch.nn.init.normal_(gate.gate.weight)
    torch.nn.init.normal_(gate.gate.bias)
    x1, x2 = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    logits = torch.cat([x1, x2], -1) @ gate.gate.weight.T + gate.gate.bias
    g = 1 / (1 + torch.exp(-logits))
    mixed = g[:, :3] * x1 + g[:, 3:] * x2
    expected = (mixed - mixed.mean(-1, keepdim=True)) / torch.sqrt(
        mixed.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(gate(x1, x2), expected)


def test_gates_start_at_one_half():
    gate = GatedFusion(4)
    x1, x2 = torch.randn(5, 4), torch.randn(5, 4)
    torch.testing.assert_close(gate(x1, x2), gate.norm(0.5 * x1 + 0.5 * x2))


def levels_and_memory(bs=2, c=8, shapes=((4, 4), (2, 2))):
    feats = [torch.randn(bs, c, h, w, dtype=torch.float64) for h, w in shapes]
    return flatten_levels(feats, LevelIndex())


def test_attention_without_projections_is_the_projected_one_with_identities():
    torch.manual_seed(1)
    memory, levels = levels_and_memory()
    plain = MultiScaleDeformableAttention(8, 2, 2, [3, 1], projections=False).double()
    projected = MultiScaleDeformableAttention(8, 2, 2, [3, 1]).double()
    projected.load_state_dict(plain.state_dict(), strict=False)
    for proj in (projected.value_proj, projected.output_proj):
        torch.nn.init.eye_(proj.weight)
        torch.nn.init.zeros_(proj.bias)
    assert not any('proj' in k for k in plain.state_dict())
    query = torch.randn(2, 5, 8, dtype=torch.float64)
    ref = torch.rand(2, 5, 1, 4, dtype=torch.float64) * 0.5 + 0.25
    args = (query, ref, memory, levels.spatial_shapes, levels.level_start_index)
    torch.testing.assert_close(plain(*args), projected(*args))


def test_layer_composition():
    """self-attention + norm1, gated cross-attention, FFN + clamp + norm3, step by step."""
    torch.manual_seed(2)
    memory, levels = levels_and_memory()
    layer = DFINEDecoderLayer(8, num_heads=2, num_levels=2, num_points=[3, 1], ffn_dims=16).double()
    torch.nn.init.normal_(layer.gateway.gate.weight)
    query = torch.randn(2, 5, 8, dtype=torch.float64)
    pos = torch.randn(2, 5, 8, dtype=torch.float64)
    ref = torch.rand(2, 5, 1, 4, dtype=torch.float64) * 0.5 + 0.25
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[0, 1:] = True
    q = query + pos
    x = layer.norm1(query + layer.self_attn(q, q, query, attn_mask=mask))
    attn = layer.cross_attn(x + pos, ref, memory, levels.spatial_shapes, levels.level_start_index)
    x = layer.gateway(x, attn)
    x = x + layer.ffn.linear2(layer.ffn.linear1(x).relu())
    expected = layer.norm3(x)
    torch.testing.assert_close(layer(query, pos, ref, memory, levels, mask), expected)


def build_decoder(**kwargs):
    cfg = dict(type='DFINEDecoder', in_channels=[8, 16], embed_dims=8, num_queries=4,
               num_layers=3, layer_cfg=dict(num_heads=2, num_levels=2, num_points=[3, 1],
                                            ffn_dims=16))
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        return MODELS.build(dict(cfg, **kwargs))


def test_levels_of_decoder_width_enter_unprojected():
    decoder = build_decoder()
    assert isinstance(decoder.input_proj[0], torch.nn.Identity)
    assert isinstance(decoder.input_proj[1].conv, torch.nn.Conv2d)


def test_wider_layers_are_reported():
    with pytest.raises(ValueError, match='layer_scale'):
        build_decoder(layer_scale=2)


@pytest.mark.parametrize('eval_idx', [0, 1, -1])
def test_inference_runs_the_layers_up_to_eval_idx(eval_idx):
    decoder = build_decoder()
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        head = MODELS.build(dict(type='DFINEHead', num_classes=3, embed_dims=8, num_pred_layers=3,
                                 eval_idx=eval_idx, reg_max=8))
    calls = []
    for i, layer in enumerate(decoder.layers):
        layer.register_forward_hook(lambda *args, i=i: calls.append(i))
    feats = [torch.randn(1, 8, 4, 4), torch.randn(1, 16, 2, 2)]
    decoder.eval()
    head.eval()
    with torch.no_grad():
        out = decoder(feats, head)
    assert calls == list(range(eval_idx % 3 + 1))
    assert out.logits.shape == (1, 1, 4, 3) and out.pre is None
    assert out.extras.shape == (1, 1, 4, 4 * 9)
