"""MultiScaleDeformableAttention: the paper's initialization, both reference-point forms and the
padding mask, each against a computation written out here with the float64 loop reference."""
import math
from unittest import mock

import pytest
import torch

from detr_plugin.ops import MultiScaleDeformableAttention, ms_deform_attn_module
from detr_plugin.registry import MODELS

EMBED, HEADS, LEVELS, POINTS = 8, 2, 2, 3
SHAPES = [(4, 5), (2, 3)]


def test_init_matches_the_paper():
    heads, levels, points = 8, 4, 4
    attn = MultiScaleDeformableAttention(embed_dims=32, num_heads=heads, num_levels=levels,
                                         num_points=points)
    bias = attn.sampling_offsets.bias.view(heads, levels, points, 2)
    for h in range(heads):
        angle = 2 * math.pi * h / heads
        cos, sin = math.cos(angle), math.sin(angle)
        unit = (cos / max(abs(cos), abs(sin)), sin / max(abs(cos), abs(sin)))
        for level in range(levels):
            for p in range(points):
                expected = torch.tensor([unit[0] * (p + 1), unit[1] * (p + 1)])
                torch.testing.assert_close(bias[h, level, p], expected)
    assert bias[2, 0, 3].tolist() == pytest.approx([0.0, 4.0], abs=1e-6)  # head 2 of 8: 90 degrees
    assert attn.sampling_offsets.weight.abs().max() == 0
    assert attn.attention_weights.weight.abs().max() == 0
    assert attn.attention_weights.bias.abs().max() == 0
    for proj in (attn.value_proj, attn.output_proj):
        bound = math.sqrt(6 / (32 + 32))  # xavier_uniform for a 32 x 32 weight
        assert proj.bias.abs().max() == 0
        assert proj.weight.abs().max() <= bound
        assert proj.weight.std() > 0.8 * bound / math.sqrt(3)  # spread like U(-bound, bound)


def make_module(seed=0):
    """A float64 module with every parameter random, so offsets and weights are not trivial."""
    torch.manual_seed(seed)
    attn = MultiScaleDeformableAttention(EMBED, HEADS, LEVELS, POINTS, backend='pytorch').double()
    with torch.no_grad():
        for param in attn.parameters():
            param.normal_(0, 0.5)
    return attn


def make_inputs(ref_dims, ref_levels=LEVELS, bs=2, num_query=3):
    gen = torch.Generator().manual_seed(ref_dims * 10 + ref_levels)
    num_value = sum(h * w for h, w in SHAPES)
    query = torch.randn(bs, num_query, EMBED, dtype=torch.float64, generator=gen)
    value = torch.randn(bs, num_value, EMBED, dtype=torch.float64, generator=gen)
    ref = torch.rand(bs, num_query, ref_levels, ref_dims, dtype=torch.float64, generator=gen)
    if ref_dims == 4:
        ref[..., 2:] = ref[..., 2:] * 0.5 + 0.1  # box sizes
    spatial_shapes = torch.tensor(SHAPES)
    start = torch.tensor([0, SHAPES[0][0] * SHAPES[0][1]])
    return query, ref, value, spatial_shapes, start


def expected_output(attn, query, ref, value, msda_ref, padding_mask=None):
    """The module's computation spelled out: per (b, q, h, l, p) sampling location by hand."""
    bs, num_query, _ = query.shape
    dim = EMBED // HEADS
    v = value @ attn.value_proj.weight.T + attn.value_proj.bias
    if padding_mask is not None:
        v = v * (~padding_mask)[..., None]
    v = v.view(bs, -1, HEADS, dim)
    offsets = (query @ attn.sampling_offsets.weight.T + attn.sampling_offsets.bias).view(
        bs, num_query, HEADS, LEVELS, POINTS, 2)
    logits = (query @ attn.attention_weights.weight.T + attn.attention_weights.bias).view(
        bs, num_query, HEADS, LEVELS * POINTS)
    weights = (logits.exp() / logits.exp().sum(-1, keepdim=True)).view(
        bs, num_query, HEADS, LEVELS, POINTS)
    loc = torch.empty(bs, num_query, HEADS, LEVELS, POINTS, 2, dtype=torch.float64)
    for b in range(bs):
        for q in range(num_query):
            for h in range(HEADS):
                for level, (height, width) in enumerate(SHAPES):
                    r = ref[b, q, level if ref.shape[2] > 1 else 0]
                    for p in range(POINTS):
                        dx, dy = offsets[b, q, h, level, p]
                        if ref.shape[-1] == 2:  # offsets in pixels of this level
                            loc[b, q, h, level, p] = torch.stack([r[0] + dx / width,
                                                                  r[1] + dy / height])
                        else:  # offsets in half box sizes, split among the points
                            loc[b, q, h, level, p] = torch.stack(
                                [r[0] + dx / POINTS * r[2] * 0.5, r[1] + dy / POINTS * r[3] * 0.5])
    sampled = msda_ref.naive_msda(v, SHAPES, loc, weights)
    return sampled @ attn.output_proj.weight.T + attn.output_proj.bias


@pytest.mark.parametrize('ref_dims', [2, 4])
@pytest.mark.parametrize('ref_levels', [LEVELS, 1])
def test_forward_matches_hand_computation(msda_ref, ref_dims, ref_levels):
    attn = make_module()
    query, ref, value, spatial_shapes, start = make_inputs(ref_dims, ref_levels)
    with torch.no_grad():
        out = attn(query, ref, value, spatial_shapes, start)
        expected = expected_output(attn, query, ref, value, msda_ref)
    assert out.shape == (2, 3, EMBED)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('ref_dims', [2, 4])
def test_hook_on_sampling_points_sees_what_the_op_gets(ref_dims):
    """The seam for visualization: a forward hook records the op's locations and weights, and
    the module has no parameter and saves nothing (checkpoints keep their keys)."""
    attn = make_module(4)
    query, ref, value, spatial_shapes, start = make_inputs(ref_dims)
    hooked, op_args = [], []
    attn.sampling_points.register_forward_hook(lambda module, args, out: hooked.append(out))
    op = ms_deform_attn_module.multi_scale_deformable_attention

    def recording_op(*args, **kwargs):
        op_args.append(args)
        return op(*args, **kwargs)

    with mock.patch.object(ms_deform_attn_module, 'multi_scale_deformable_attention',
                           recording_op), torch.no_grad():
        attn(query, ref, value, spatial_shapes, start)
    (locations, weights), = hooked
    (_, _, _, op_locations, op_weights), = op_args
    assert locations.shape == (2, 3, HEADS, LEVELS, POINTS, 2)
    assert torch.equal(locations, op_locations) and torch.equal(weights, op_weights)
    torch.testing.assert_close(weights.sum((-2, -1)), torch.ones(2, 3, HEADS, dtype=torch.float64))
    assert not list(attn.sampling_points.parameters()) and not attn.sampling_points.state_dict()


def test_shared_reference_equals_per_level_copies():
    attn = make_module(1)
    query, ref, value, spatial_shapes, start = make_inputs(2, ref_levels=1)
    shared = attn(query, ref, value, spatial_shapes, start)
    copied = attn(query, ref.expand(-1, -1, LEVELS, -1), value, spatial_shapes, start)
    torch.testing.assert_close(shared, copied)


def test_padding_mask_zeroes_padded_values(msda_ref):
    attn = make_module(2)
    query, ref, value, spatial_shapes, start = make_inputs(4)
    mask = torch.zeros(value.shape[:2], dtype=torch.bool)
    mask[0, 3:9] = True
    mask[1, -4:] = True
    with torch.no_grad():
        out = attn(query, ref, value, spatial_shapes, start, value_padding_mask=mask)
        expected = expected_output(attn, query, ref, value, msda_ref, padding_mask=mask)
        scrambled = value.masked_fill(mask[..., None], 1e3)  # padded tokens must not matter
        out_scrambled = attn(query, ref, scrambled, spatial_shapes, start, value_padding_mask=mask)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_scrambled, out, rtol=1e-10, atol=1e-10)


def test_registered_and_builds_from_config():
    attn = MODELS.build(dict(type='MultiScaleDeformableAttention', embed_dims=16, num_heads=4,
                             num_levels=3, num_points=2))
    assert isinstance(attn, MultiScaleDeformableAttention)
    assert attn.sampling_offsets.out_features == 4 * 3 * 2 * 2
    assert attn.attention_weights.out_features == 4 * 3 * 2


def test_backward_reaches_every_parameter():
    attn = make_module(3)
    query, ref, value, spatial_shapes, start = make_inputs(2)
    attn(query.requires_grad_(), ref, value, spatial_shapes, start).square().sum().backward()
    for name, param in attn.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert query.grad.abs().sum() > 0


@pytest.mark.parametrize('change,name', [
    (dict(ref=torch.rand(2, 3, 3, 2)), 'reference_points'),  # 3 levels, module has 2
    (dict(ref=torch.rand(2, 3, 2, 3)), 'reference_points'),  # neither points nor boxes
    (dict(value=torch.randn(2, 26, 6)), 'value'),  # channels
    (dict(mask=torch.zeros(2, 25, dtype=torch.bool)), 'value_padding_mask'),
    (dict(spatial_shapes=torch.tensor([[4, 5]])), 'spatial_shapes'),
])
def test_bad_inputs_raise_naming_the_argument(change, name):
    attn = MultiScaleDeformableAttention(EMBED, HEADS, LEVELS, POINTS)
    query, ref, value, spatial_shapes, start = (t.float() if t.is_floating_point() else t
                                               for t in make_inputs(2))
    args = dict(ref=ref, value=value, mask=None, spatial_shapes=spatial_shapes)
    args.update(change)
    with pytest.raises(ValueError, match=name):
        attn(query, args['ref'], args['value'], args['spatial_shapes'], start,
             value_padding_mask=args['mask'])
    with pytest.raises(ValueError, match='num_heads'):
        MultiScaleDeformableAttention(embed_dims=10, num_heads=4)


# -- per-level point counts and discrete sampling (RT-DETRv2) -------------------------------------

@pytest.mark.parametrize('ref_dims', [2, 4])
def test_uniform_list_equals_int_bitwise(ref_dims):
    """num_points=[4, 4, 4] is num_points=4: same parameters (names, shapes, initial values) and
    bitwise the same outputs, so existing checkpoints load and run unchanged."""
    shapes = torch.tensor([[6, 5], [3, 3], [2, 1]])
    start = torch.tensor([0, 30, 39])
    modules = []
    for num_points in (4, [4, 4, 4]):
        torch.manual_seed(0)
        modules.append(MultiScaleDeformableAttention(16, 2, 3, num_points, backend='pytorch'))
    as_int, as_list = modules
    assert {k: v.shape for k, v in as_int.state_dict().items()} == \
        {k: v.shape for k, v in as_list.state_dict().items()}
    assert all(torch.equal(a, b) for a, b in zip(as_int.state_dict().values(),
                                                  as_list.state_dict().values()))
    with torch.no_grad():
        for param in as_int.parameters():
            param.normal_(0, 0.5)
    as_list.load_state_dict(as_int.state_dict())
    gen = torch.Generator().manual_seed(1)
    query, value = torch.randn(2, 5, 16, generator=gen), torch.randn(2, 41, 16, generator=gen)
    ref = torch.rand(2, 5, 1, ref_dims, generator=gen)
    assert torch.equal(as_int(query, ref, value, shapes, start),
                       as_list(query, ref, value, shapes, start))


UNEVEN_POINTS = [3, 1]  # level 0: 3 points, level 1: 1 point (SHAPES has 2 levels)


def make_uneven_module(seed=0, method='default'):
    torch.manual_seed(seed)
    attn = MultiScaleDeformableAttention(EMBED, HEADS, LEVELS, UNEVEN_POINTS, method=method,
                                         backend='pytorch').double()
    with torch.no_grad():
        for param in attn.parameters():
            param.normal_(0, 0.5)
    return attn


def expected_uneven_output(attn, query, ref, value, msda_ref, discrete=False):
    """RT-DETRv2's computation written out per point: point p of level l (P_l points) samples
    ref + offset / (W_l, H_l) (point references) or ref_xy + offset * (1 / P_l) * ref_wh * 0.5
    (box references: the original's num_points_scale and offset_scale)."""
    bs, num_query, _ = query.shape
    total = sum(UNEVEN_POINTS)
    v = value @ attn.value_proj.weight.T + attn.value_proj.bias
    v = v.view(bs, -1, HEADS, EMBED // HEADS)
    offsets = (query @ attn.sampling_offsets.weight.T + attn.sampling_offsets.bias).view(
        bs, num_query, HEADS, total, 2)
    logits = (query @ attn.attention_weights.weight.T + attn.attention_weights.bias).view(
        bs, num_query, HEADS, total)
    weights = logits.exp() / logits.exp().sum(-1, keepdim=True)  # over all level x point pairs
    levels = [level for level, n in enumerate(UNEVEN_POINTS) for _ in range(n)]
    loc = torch.empty(bs, num_query, HEADS, total, 2, dtype=torch.float64)
    for b in range(bs):
        for q in range(num_query):
            for h in range(HEADS):
                for p, level in enumerate(levels):
                    r = ref[b, q, level if ref.shape[2] > 1 else 0]
                    dx, dy = offsets[b, q, h, p]
                    height, width = SHAPES[level]
                    if ref.shape[-1] == 2:
                        loc[b, q, h, p] = torch.stack([r[0] + dx / width, r[1] + dy / height])
                    else:
                        scale = 1.0 / UNEVEN_POINTS[level]
                        loc[b, q, h, p] = torch.stack([r[0] + dx * scale * r[2] * 0.5,
                                                       r[1] + dy * scale * r[3] * 0.5])
    reference = msda_ref.naive_discrete_msda if discrete else msda_ref.naive_msda
    sampled = reference(v, SHAPES, loc, weights, UNEVEN_POINTS)
    return sampled @ attn.output_proj.weight.T + attn.output_proj.bias


@pytest.mark.parametrize('ref_dims', [2, 4])
@pytest.mark.parametrize('ref_levels', [LEVELS, 1])
def test_uneven_points_forward_matches_hand_computation(msda_ref, ref_dims, ref_levels):
    attn = make_uneven_module()
    query, ref, value, spatial_shapes, start = make_inputs(ref_dims, ref_levels)
    assert attn.sampling_offsets.out_features == HEADS * 4 * 2
    with torch.no_grad():
        out = attn(query, ref, value, spatial_shapes, start)
        expected = expected_uneven_output(attn, query, ref, value, msda_ref)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_uneven_points_hook_sees_the_flat_layout():
    attn = make_uneven_module(1)
    query, ref, value, spatial_shapes, start = make_inputs(4)
    hooked = []
    attn.sampling_points.register_forward_hook(lambda module, args, out: hooked.append(out))
    with torch.no_grad():
        attn(query, ref, value, spatial_shapes, start)
    (locations, weights), = hooked
    assert locations.shape == (2, 3, HEADS, 4, 2) and weights.shape == (2, 3, HEADS, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, HEADS, dtype=torch.float64))


def test_uneven_point_levels_are_unsaved_buffers_moved_with_the_module():
    """Each point's level and its level's count, fixed at construction: ``.to()`` moves them (no
    copy per forward), checkpoints do not see them."""
    attn = MultiScaleDeformableAttention(8, 2, 3, [2, 1, 3])
    assert attn.sampling_points.point_level.tolist() == [0, 0, 1, 2, 2, 2]
    assert attn.sampling_points.point_count.tolist() == [2, 2, 1, 3, 3, 3]
    assert set(attn.state_dict()) == {f'{layer}.{p}' for p in ('weight', 'bias') for layer in (
        'sampling_offsets', 'attention_weights', 'value_proj', 'output_proj')}
    attn.to('meta')
    assert attn.sampling_points.point_level.is_meta and attn.sampling_points.point_count.is_meta


def test_uneven_init_matches_the_original_rule():
    """RT-DETRv2's init: head h's direction times 1..P_l for the points of level l."""
    heads = 4
    attn = MultiScaleDeformableAttention(32, heads, 3, [3, 6, 3])
    bias = attn.sampling_offsets.bias.view(heads, 12, 2)
    directions = [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)]  # 0, 90, 180, 270 degrees
    steps = [1, 2, 3, 1, 2, 3, 4, 5, 6, 1, 2, 3]
    for h, (dx, dy) in enumerate(directions):
        for p, step in enumerate(steps):
            assert bias[h, p].tolist() == pytest.approx([dx * step, dy * step], abs=1e-6)
    assert attn.attention_weights.out_features == heads * 12


@pytest.mark.parametrize('ref_dims', [2, 4])
def test_discrete_module_matches_hand_computation(msda_ref, ref_dims):
    attn = make_uneven_module(2, method='discrete')
    query, ref, value, spatial_shapes, start = make_inputs(ref_dims)
    with torch.no_grad():
        out = attn(query, ref, value, spatial_shapes, start)
        expected = expected_uneven_output(attn, query, ref, value, msda_ref, discrete=True)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_discrete_module_freezes_sampling_offsets():
    """As the original: discrete sampling has no location gradient, so sampling_offsets is frozen
    (no gradient, skipped by optimizers); the other parameters learn."""
    attn = make_uneven_module(3, method='discrete')
    assert not any(p.requires_grad for p in attn.sampling_offsets.parameters())
    query, ref, value, spatial_shapes, start = make_inputs(4)
    attn(query, ref, value, spatial_shapes, start).square().sum().backward()
    for name, param in attn.named_parameters():
        if name.startswith('sampling_offsets'):
            assert param.grad is None, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize('kwargs,name', [
    (dict(num_points=[4, 4]), 'num_points'),  # 3 levels
    (dict(num_points=[4, 0, 4]), 'num_points'),
    (dict(num_points=2.5), 'num_points'),
    (dict(method='bicubic'), 'method'),
])
def test_bad_point_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MultiScaleDeformableAttention(16, 2, 3, **kwargs)
