"""multi_scale_deformable_attention on CPU (the grid_sample path): values against a float64 loop,
gradients by finite differences, input validation, backend choice and the fallback for a broken
CUDA extension."""
import warnings

import pytest
import torch

from detr_plugin.ops import multi_scale_deformable_attention as msda
from detr_plugin.ops import ms_deform_attn as msda_module

SHAPES = [[(5, 7)], [(6, 4), (3, 2)], [(4, 5), (3, 3), (1, 2)]]


@pytest.mark.parametrize('shapes', SHAPES)
@pytest.mark.parametrize('points', [1, 3])
def test_pytorch_path_matches_naive_loop(msda_ref, shapes, points):
    gen = torch.Generator().manual_seed(len(shapes) * 10 + points)
    inputs = msda_ref.random_inputs(2, 3, 2, 3, shapes, points, margin=0.3, generator=gen)
    value, spatial_shapes, start, loc, weight = inputs
    expected = msda_ref.naive_msda(value, shapes, loc, weight)
    out = msda(value, spatial_shapes, start, loc, weight, backend='pytorch')
    assert out.shape == (2, 3, 2 * 3)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_gather_reference_matches_naive_loop(msda_ref):
    """The vectorized reference used for the GPU tests agrees with the loop."""
    shapes = [(4, 6), (2, 3)]
    gen = torch.Generator().manual_seed(0)
    value, _, _, loc, weight = msda_ref.random_inputs(2, 4, 3, 5, shapes, 2, margin=0.3, generator=gen)
    torch.testing.assert_close(msda_ref.gather_msda(value, shapes, loc, weight),
                               msda_ref.naive_msda(value, shapes, loc, weight), rtol=1e-12, atol=1e-12)


def border_locations(height, width):
    """(x, y) pairs on pixel centres, pixel edges, the map's borders and just beyond them."""
    xs = [0.0, 1.0, 0.5 / width, (width - 0.5) / width, 1.0 / width, -0.5 / width, -1.0 / width,
          1.0 + 0.5 / width, 1.0 + 1.0 / width, 2.0, -1.0]
    ys = [0.0, 1.0, 0.5 / height, (height - 0.5) / height, -0.5 / height, 1.0 + 0.5 / height, 3.0]
    return torch.tensor([(x, y) for x in xs for y in ys], dtype=torch.float64)


def test_points_on_borders_and_outside(msda_ref):
    height, width = 3, 4
    pairs = border_locations(height, width)  # (n, 2)
    n = pairs.shape[0]
    value = torch.randn(1, height * width, 1, 2, dtype=torch.float64)
    loc = pairs.view(1, n, 1, 1, 1, 2)
    weight = torch.ones(1, n, 1, 1, 1, dtype=torch.float64)
    spatial_shapes, start = torch.tensor([[height, width]]), torch.tensor([0])
    out = msda(value, spatial_shapes, start, loc, weight, backend='pytorch')
    torch.testing.assert_close(out, msda_ref.naive_msda(value, [(height, width)], loc, weight),
                               rtol=1e-12, atol=1e-12)
    grid = value[0, :, 0].view(height, width, 2)
    by_pair = {tuple(p.tolist()): out[0, i] for i, p in enumerate(pairs)}
    # hand-computed: a pixel centre reads that pixel; the map's corner (0, 0) reads a quarter of
    # pixel (0, 0) (three of its four bilinear corners are off the map); far outside reads zero
    torch.testing.assert_close(by_pair[(0.5 / width, 0.5 / height)], grid[0, 0])
    torch.testing.assert_close(by_pair[((width - 0.5) / width, 1.0 - 0.5 / height)], grid[-1, -1])
    torch.testing.assert_close(by_pair[(0.0, 0.0)], 0.25 * grid[0, 0])
    torch.testing.assert_close(by_pair[(1.0, 1.0)], 0.25 * grid[-1, -1])
    torch.testing.assert_close(by_pair[(1.0 / width, 0.5 / height)], 0.5 * (grid[0, 0] + grid[0, 1]))
    assert by_pair[(2.0, 0.0)].abs().max() == 0 and by_pair[(-1.0, 3.0)].abs().max() == 0


def test_gradcheck_pytorch_path(msda_ref):
    gen = torch.Generator().manual_seed(3)
    value, spatial_shapes, start, loc, weight = msda_ref.random_inputs(
        1, 2, 2, 3, [(3, 4), (2, 2)], 2, margin=0.2, generator=gen)
    inputs = [t.requires_grad_() for t in (value, loc, weight)]

    def fn(v, l, w):
        return msda(v, spatial_shapes, start, l, w, backend='pytorch')

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_pytorch_path_gradients_match_reference(msda_ref):
    """Analytic gradients of both paths agree, points off the map included."""
    shapes = [(5, 3), (2, 4)]
    gen = torch.Generator().manual_seed(4)
    value, spatial_shapes, start, loc, weight = msda_ref.random_inputs(
        2, 5, 2, 4, shapes, 3, margin=0.4, generator=gen)
    grad_out = torch.randn(2, 5, 8, dtype=torch.float64, generator=gen)
    grads = []
    for fn in (lambda v, l, w: msda(v, spatial_shapes, start, l, w, backend='pytorch'),
               lambda v, l, w: msda_ref.gather_msda(v, shapes, l, w)):
        inputs = [t.detach().clone().requires_grad_() for t in (value, loc, weight)]
        grads.append(torch.autograd.grad(fn(*inputs), inputs, grad_out))
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_float32_and_non_contiguous_inputs(msda_ref):
    shapes = [(4, 4), (2, 3)]
    value, spatial_shapes, start, loc, weight = msda_ref.random_inputs(2, 3, 2, 4, shapes, 2)
    value_nc = value.float().transpose(0, 1).contiguous().transpose(0, 1)  # same values, strided
    loc_nc = torch.cat([loc, loc], -1).float()[..., :2]
    assert not value_nc.is_contiguous() and not loc_nc.is_contiguous()
    out = msda(value_nc, spatial_shapes, start, loc_nc, weight.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), msda_ref.naive_msda(value, shapes, loc, weight),
                               rtol=1e-5, atol=1e-5)


def valid_inputs():
    value = torch.randn(2, 4 * 4 + 2 * 2, 2, 3)
    spatial_shapes = torch.tensor([[4, 4], [2, 2]])
    start = torch.tensor([0, 16])
    loc = torch.rand(2, 5, 2, 2, 3, 2)
    weight = torch.rand(2, 5, 2, 2, 3)
    return dict(value=value, spatial_shapes=spatial_shapes, level_start_index=start,
                sampling_locations=loc, attention_weights=weight)


BAD_INPUTS = [
    # (name of the argument in the message, error type, change to the valid inputs)
    ('value', ValueError, dict(value=torch.randn(2, 19, 2, 3))),  # sum(H*W) = 20
    ('value', ValueError, dict(value=torch.randn(3, 20, 2, 3))),  # batch
    ('value', ValueError, dict(value=torch.randn(2, 20, 4, 3))),  # heads
    ('attention_weights', ValueError, dict(attention_weights=torch.rand(2, 5, 3, 2, 3))),  # heads
    ('attention_weights', ValueError, dict(attention_weights=torch.rand(1, 5, 2, 2, 3))),  # batch
    ('levels', ValueError, dict(attention_weights=torch.rand(2, 5, 2, 3, 3))),
    ('levels', ValueError, dict(spatial_shapes=torch.tensor([[4, 4], [2, 2], [1, 1]]),
                                level_start_index=torch.tensor([0, 16, 20]))),
    ('level_start_index', ValueError, dict(level_start_index=torch.tensor([0, 16, 20]))),
    ('points', ValueError, dict(attention_weights=torch.rand(2, 5, 2, 2, 4))),
    ('sampling_locations', ValueError, dict(sampling_locations=torch.rand(2, 5, 2, 2, 3, 3))),
    ('level_start_index', ValueError, dict(level_start_index=torch.tensor([0, 15]))),
    ('sampling_locations', TypeError, dict(sampling_locations=torch.rand(2, 5, 2, 2, 3, 2).double())),
    ('attention_weights', TypeError, dict(attention_weights=torch.rand(2, 5, 2, 2, 3).half())),
    ('value', TypeError, dict(value=torch.ones(2, 20, 2, 3, dtype=torch.long))),
    ('spatial_shapes', TypeError, dict(spatial_shapes=torch.tensor([[4., 4.], [2., 2.]]))),
    ('spatial_shapes', TypeError, dict(spatial_shapes=[[4, 4], [2, 2]])),
    ('sampling_locations', ValueError, dict(sampling_locations=torch.rand(2, 5, 2, 2, 3, 2,
                                                                          device='meta'))),
]


@pytest.mark.parametrize('name,error,change', BAD_INPUTS)
def test_bad_inputs_raise_naming_the_argument(name, error, change):
    inputs = {**valid_inputs(), **change}
    with pytest.raises(error, match=name):
        msda(**inputs)


def test_without_host_shapes_every_call_reads_the_index_tensors():
    inputs = valid_inputs()
    msda(**inputs)
    inputs['spatial_shapes'][1, 0] = 3  # the same tensor, edited in place
    with pytest.raises(ValueError, match='value'):
        msda(**inputs)


def test_host_shapes_are_used_and_the_index_tensors_not_read(msda_ref):
    """Given the level sizes on the host, the op samples with them and never looks at the
    values of spatial_shapes / level_start_index (here deliberately wrong)."""
    shapes = [(4, 5), (3, 3), (1, 2)]
    gen = torch.Generator().manual_seed(3)
    value, _, _, loc, weight = msda_ref.random_inputs(2, 3, 2, 3, shapes, [2, 1, 3], margin=0.3,
                                                      generator=gen)
    wrong_shapes, wrong_starts = torch.full((3, 2), 7), torch.tensor([5, 0, 1])
    out = msda(value, wrong_shapes, wrong_starts, loc, weight, backend='pytorch',
               num_points=[2, 1, 3], shapes=shapes)
    expected = msda_ref.naive_msda(value, shapes, loc, weight, [2, 1, 3])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('shapes,match', [
    ([(4, 4), (2, 1)], 'value has 20 tokens'),  # sum(H*W) = 18
    ([(4, 4), (2, 2), (1, 1)], 'shapes has 3 levels'),
    ([(5, 4), (0, 2)], 'positive'),
])
def test_host_shapes_checked_against_value(shapes, match):
    with pytest.raises(ValueError, match=match):
        msda(**valid_inputs(), shapes=shapes)


def test_backend_argument_and_environment(monkeypatch):
    inputs = valid_inputs()
    with pytest.raises(ValueError, match='backend'):
        msda(**inputs, backend='triton')
    with pytest.raises(ValueError, match='cuda'):
        msda(**inputs, backend='cuda')  # CPU tensors
    monkeypatch.setenv(msda_module.ENV_BACKEND, 'nonsense')
    with pytest.raises(ValueError, match=msda_module.ENV_BACKEND):
        msda(**inputs)
    monkeypatch.setenv(msda_module.ENV_BACKEND, 'pytorch')
    torch.testing.assert_close(msda(**inputs), msda(**inputs, backend='pytorch'))


@pytest.fixture
def broken_extension(monkeypatch):
    """detr_plugin._ext as if built for another torch: importing it raises ImportError."""
    def fail(name):
        raise ImportError(f'{name}: undefined symbol: _ZN3c104cuda9SetDeviceEi')
    monkeypatch.setattr(msda_module.importlib, 'import_module', fail)
    for attr, fresh in (('module', None), ('error', None), ('tried', False), ('warned', False)):
        monkeypatch.setattr(msda_module._ExtState, attr, fresh)


def test_broken_extension_falls_back_with_one_warning(broken_extension):
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # CPU tensors: no warning at all
        out = msda(**valid_inputs())
    assert out.shape == (2, 5, 6)
    assert not msda_module.cuda_ext_available()
    cuda = torch.device('cuda')
    with pytest.warns(RuntimeWarning, match='undefined symbol'):
        assert msda_module._resolve_backend(None, cuda) == 'pytorch'
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # once only
        assert msda_module._resolve_backend(None, cuda) == 'pytorch'
    with pytest.raises(RuntimeError, match='unavailable'):
        msda_module._resolve_backend('cuda', cuda)


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning', 'ignore::DeprecationWarning')
def test_traced_graph_uses_the_pytorch_path(msda_ref):
    """Tracing (the ONNX export route) records the grid_sample path, whatever the device."""
    shapes = [(3, 4), (2, 2)]
    value, spatial_shapes, start, loc, weight = msda_ref.random_inputs(1, 2, 2, 3, shapes, 2,
                                                                       dtype=torch.float32)
    traced = torch.jit.trace(lambda v, l, w: msda(v, spatial_shapes, start, l, w),
                             (value, loc, weight), check_trace=False)
    assert 'grid_sampler' in str(traced.graph)
    torch.testing.assert_close(traced(value, loc, weight), msda(value, spatial_shapes, start, loc,
                                                                weight))


# -- per-level point counts and discrete sampling (RT-DETRv2) -------------------------------------

UNEVEN = [((3, 6, 3), [(4, 5), (3, 3), (1, 2)]), ((1, 1, 1), [(5, 4), (2, 3), (2, 2)]),
          ((2, 5), [(3, 7), (2, 2)]), ((4,), [(3, 3)])]


@pytest.mark.parametrize('num_points,shapes', UNEVEN)
def test_uneven_points_match_naive_loop(msda_ref, num_points, shapes):
    gen = torch.Generator().manual_seed(sum(num_points))
    value, spatial_shapes, start, loc, weight = msda_ref.random_inputs(
        2, 3, 2, 3, shapes, num_points, margin=0.3, generator=gen)
    assert loc.shape == (2, 3, 2, sum(num_points), 2)
    out = msda(value, spatial_shapes, start, loc, weight, backend='pytorch', num_points=num_points)
    expected = msda_ref.naive_msda(value, shapes, loc, weight, num_points)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_naive_loop_reads_each_level_with_its_own_points(msda_ref):
    """The reference itself, by hand: level 0 has 1 point, level 1 has 2, on pixel centres."""
    value = torch.arange(4 + 2, dtype=torch.float64).view(1, 6, 1, 1)  # (2, 2) map, then (1, 2)
    loc = torch.tensor([[0.75, 0.25], [0.25, 0.5], [0.75, 0.5]], dtype=torch.float64)
    weight = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    out = msda_ref.naive_msda(value, [(2, 2), (1, 2)], loc.view(1, 1, 1, 3, 2),
                              weight.view(1, 1, 1, 3), (1, 2))
    # level 0 pixel (row 0, col 1) = 1; level 1 pixels 0 and 1 = tokens 4 and 5
    assert out.item() == pytest.approx(0.5 * 1 + 0.25 * 4 + 0.25 * 5)


def test_uneven_points_gradcheck(msda_ref):
    gen = torch.Generator().manual_seed(5)
    value, spatial_shapes, start, loc, weight = msda_ref.random_inputs(
        1, 2, 2, 3, [(3, 4), (2, 2)], (1, 3), margin=0.2, generator=gen)
    inputs = [t.requires_grad_() for t in (value, loc, weight)]

    def fn(v, l, w):
        return msda(v, spatial_shapes, start, l, w, backend='pytorch', num_points=(1, 3))

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_uneven_points_gradients_match_reference(msda_ref):
    shapes, num_points = [(5, 3), (2, 4), (3, 3)], (2, 4, 1)
    gen = torch.Generator().manual_seed(6)
    value, spatial_shapes, start, loc, weight = msda_ref.random_inputs(
        2, 5, 2, 4, shapes, num_points, margin=0.4, generator=gen)
    grad_out = torch.randn(2, 5, 8, dtype=torch.float64, generator=gen)
    grads = []
    for fn in (lambda v, l, w: msda(v, spatial_shapes, start, l, w, num_points=num_points),
               lambda v, l, w: msda_ref.gather_msda(v, shapes, l, w, num_points)):
        inputs = [t.detach().clone().requires_grad_() for t in (value, loc, weight)]
        grads.append(torch.autograd.grad(fn(*inputs), inputs, grad_out))
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('num_points,shapes', UNEVEN + [((2, 2), [(4, 6), (3, 2)])])
def test_discrete_matches_nearest_cell_loop(msda_ref, num_points, shapes):
    """Points far off the map (margin 0.5) read the clamped border cell; rectangular maps too."""
    gen = torch.Generator().manual_seed(10 + sum(num_points))
    value, spatial_shapes, start, loc, weight = msda_ref.random_inputs(
        2, 4, 2, 3, shapes, num_points, margin=0.5, generator=gen)
    out = msda(value, spatial_shapes, start, loc, weight, num_points=num_points, method='discrete')
    expected = msda_ref.naive_discrete_msda(value, shapes, loc, weight, num_points)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(msda_ref.gather_msda(value, shapes, loc, weight, num_points,
                                                    method='discrete'), expected)


def test_discrete_cells_by_hand():
    """floor(x * W + 0.5), clamped: on a 2 x 4 map, x = 0.1 -> 0.9 -> column 0, x = 0.125 ->
    1.0 -> column 1, x = 0.6 -> 2.9 -> 2, x = -0.3 and 1.2 -> clamped to 0 and 3; y = 0.2 -> 0.9
    -> row 0, y = 0.25 -> 1.0 -> row 1, y = 2.0 -> clamped to 1."""
    value = torch.arange(8, dtype=torch.float64).view(1, 8, 1, 1)  # token = 4 * row + col
    pairs = [(0.1, 0.2, 0), (0.125, 0.2, 1), (0.6, 0.25, 6), (-0.3, 0.25, 4), (1.2, 2.0, 7),
             (1.2, -5.0, 3)]
    loc = torch.tensor([p[:2] for p in pairs], dtype=torch.float64).view(1, len(pairs), 1, 1, 2)
    weight = torch.ones(1, len(pairs), 1, 1, dtype=torch.float64)
    out = msda(value, torch.tensor([[2, 4]]), torch.tensor([0]), loc, weight, num_points=[1],
               method='discrete')
    assert out.view(-1).tolist() == [p[2] for p in pairs]


def test_discrete_rounds_float32_as_the_original():
    """The original computes (loc * [W, H] + 0.5).to(int64) in float32, then clamps to [0, H - 1]
    (square maps). Locations just below a cell boundary, where float32 rounding of loc * W + 0.5
    decides the cell, must land where that formula puts them."""
    size = 80  # RT-DETR's stride-8 level at 640 x 640
    gen = torch.Generator().manual_seed(0)
    centres = (torch.arange(size + 2, dtype=torch.float64) - 1.5) / size  # loc * W + 0.5 = integer
    loc = torch.cat([centres.float(), torch.nextafter(centres.float(), torch.tensor(-1.0)),
                     torch.rand(64, generator=gen) * 1.2 - 0.1])
    loc = torch.stack([loc, loc.flip(0)], -1)  # (n, 2) float32 as (x, y)
    n = loc.shape[0]
    cells = (loc * torch.tensor([[size, size]]) + 0.5).to(torch.int64).clamp(0, size - 1)
    value = torch.randn(1, size * size, 1, 4, generator=gen)
    expected = value[0, cells[:, 1] * size + cells[:, 0], 0]  # (n, 4)
    out = msda(value, torch.tensor([[size, size]]), torch.tensor([0]), loc.view(1, n, 1, 1, 2),
               torch.ones(1, n, 1, 1), num_points=(1,), method='discrete')
    assert torch.equal(out.view(n, 4), expected)


def test_discrete_gives_no_location_gradient(msda_ref):
    """As the original (its rounding cuts the graph): value and weights get gradients, the
    locations none."""
    shapes, num_points = [(4, 4), (2, 3)], (3, 2)
    gen = torch.Generator().manual_seed(7)
    value, spatial_shapes, start, loc, weight = msda_ref.random_inputs(
        1, 4, 2, 3, shapes, num_points, margin=0.3, generator=gen)
    grad_out = torch.randn(1, 4, 6, dtype=torch.float64, generator=gen)
    inputs = [t.requires_grad_() for t in (value, loc, weight)]
    out = msda(value, spatial_shapes, start, loc, weight, num_points=num_points, method='discrete')
    out.backward(grad_out)
    assert loc.grad is None
    ref_inputs = [t.detach().clone().requires_grad_() for t in (value, weight)]
    ref = msda_ref.gather_msda(ref_inputs[0], shapes, loc.detach(), ref_inputs[1], num_points,
                               method='discrete')
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad_out)
    torch.testing.assert_close(value.grad, ref_grads[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weight.grad, ref_grads[1], rtol=1e-12, atol=1e-12)
    assert inputs[0].grad.abs().sum() > 0


def flat_valid_inputs():
    inputs = valid_inputs()  # 2 levels with 3 points each
    inputs['sampling_locations'] = torch.rand(2, 5, 2, 1 + 4, 2)
    inputs['attention_weights'] = torch.rand(2, 5, 2, 1 + 4)
    return dict(inputs, num_points=(1, 4))


BAD_POINTS = [
    ('num_points', flat_valid_inputs(), dict(num_points=None)),  # the flat layout needs it
    ('num_points', flat_valid_inputs(), dict(num_points=(2, 4))),  # sums to 6, not 5
    ('num_points', flat_valid_inputs(), dict(num_points=(1, 2, 2))),  # 3 levels, not 2
    ('num_points', flat_valid_inputs(), dict(num_points=(0, 5))),
    ('num_points', valid_inputs(), dict(num_points=(3, 2))),  # the (L, P) layout has 3 and 3
    ('attention_weights', flat_valid_inputs(), dict(attention_weights=torch.rand(2, 5, 2, 4))),
    ('attention_weights', flat_valid_inputs(), dict(attention_weights=torch.rand(2, 5, 2, 1, 5))),
    ('method', flat_valid_inputs(), dict(method='nearest')),
]


@pytest.mark.parametrize('name,inputs,change', BAD_POINTS)
def test_bad_point_counts_raise_naming_the_argument(name, inputs, change):
    with pytest.raises(ValueError, match=name):
        msda(**{**inputs, **change})


def test_uniform_counts_accept_both_layouts():
    inputs = valid_inputs()
    per_level = msda(**inputs, num_points=(3, 3))
    flat = msda(**dict(inputs, sampling_locations=inputs['sampling_locations'].flatten(3, 4),
                       attention_weights=inputs['attention_weights'].flatten(3, 4)),
                num_points=(3, 3))
    assert torch.equal(per_level, flat) and torch.equal(per_level, msda(**inputs))


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning', 'ignore::DeprecationWarning')
def test_traced_discrete_graph_gathers_and_matches_the_loop(msda_ref):
    """The export route of discrete sampling: a gather (no grid_sample), same values."""
    shapes, num_points = [(3, 4), (2, 2)], (2, 3)
    value, spatial_shapes, start, loc, weight = msda_ref.random_inputs(
        1, 3, 2, 3, shapes, num_points, dtype=torch.float32, margin=0.3)
    traced = torch.jit.trace(
        lambda v, l, w: msda(v, spatial_shapes, start, l, w, num_points=num_points,
                             method='discrete'), (value, loc, weight), check_trace=False)
    graph = str(traced.graph)
    assert 'gather' in graph and 'grid_sampler' not in graph
    torch.testing.assert_close(traced(value, loc, weight).double(),
                               msda_ref.naive_discrete_msda(value, shapes, loc, weight, num_points))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_pytorch_path_in_16_bits_on_cpu_matches_float64(msda_ref, dtype):
    """CPU grid_sample reads a strided 16-bit map wrongly (NaN and huge values from 8 heads x
    32 channels on a 10 x 15 map up, torch 2.13): the path must give it contiguous maps."""
    shapes = [(10, 15), (5, 8)]
    gen = torch.Generator().manual_seed(0)
    value, spatial_shapes, start, loc, weight = msda_ref.random_inputs(
        1, 200, 8, 32, shapes, 4, margin=0.0, generator=gen)
    expected = msda_ref.naive_msda(value, shapes, loc, weight)
    out = msda(value.to(dtype), spatial_shapes, start, loc.to(dtype), weight.to(dtype),
               backend='pytorch')
    assert out.isfinite().all()
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=0.1)
