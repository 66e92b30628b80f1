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


def test_layout_check_sees_in_place_changes():
    """The checked level layout is cached per tensor; an in-place edit invalidates it."""
    inputs = valid_inputs()
    msda(**inputs)
    inputs['spatial_shapes'][1, 0] = 3
    with pytest.raises(ValueError, match='value'):
        msda(**inputs)


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
