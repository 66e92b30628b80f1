"""The deterministic backward of the CUDA op (``deterministic=True`` or torch's deterministic mode):
how the flag is resolved and reaches the kernels (CPU, with a stand-in extension); on the GPU,
bitwise-equal gradients across runs where many queries sample the same few pixels, and agreement
with the float64 gather reference and with the default (atomic) kernel."""
import random

import pytest
import torch

from detr_plugin.ops import cuda_ext_available
from detr_plugin.ops import ms_deform_attn
from detr_plugin.ops import multi_scale_deformable_attention as msda

TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float64: 1e-12}


def on_gpu(test):
    """Marks a test ``gpu`` and skips it without a GPU or the compiled extension."""
    skip = pytest.mark.skipif(not cuda_ext_available(),
                              reason='needs a CUDA GPU and the compiled detr_plugin._ext')
    return pytest.mark.gpu(skip(test))


class deterministic_algorithms:
    """Context manager: torch.use_deterministic_algorithms(mode) inside, the previous mode after."""

    def __init__(self, mode):
        self.mode = mode

    def __enter__(self):
        self.previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(self.mode)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.previous)


# -- flag resolution (CPU) ------------------------------------------------------------------------

@pytest.mark.parametrize('mode', [False, True])
def test_none_follows_torch_deterministic_mode_and_bools_override_it(mode):
    with deterministic_algorithms(mode):
        assert ms_deform_attn.resolve_deterministic(None) is mode
        assert ms_deform_attn.resolve_deterministic(True) is True
        assert ms_deform_attn.resolve_deterministic(False) is False


def test_deterministic_must_be_a_bool_or_none():
    with pytest.raises(TypeError, match='deterministic must be None, True or False'):
        ms_deform_attn.resolve_deterministic(1)


class FakeExt:
    """Stands in for detr_plugin._ext on the CPU: zero results, records which backward ran."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def ms_deform_attn_forward(value, shapes, start, loc, weight, points, discrete):
        return value.new_zeros(loc.shape[0], loc.shape[1], value.shape[2] * value.shape[3])

    def _backward(self, name, value, shapes, start, loc, weight, grad_output, points, discrete):
        self.calls.append(name)
        return [torch.zeros_like(value), torch.zeros_like(loc), torch.zeros_like(weight)]

    def ms_deform_attn_backward(self, *args):
        return self._backward('default', *args)

    def ms_deform_attn_backward_deterministic(self, *args):
        return self._backward('deterministic', *args)


@pytest.mark.parametrize('mode,flag,expected', [
    (False, None, 'default'), (True, None, 'deterministic'), (False, True, 'deterministic'),
    (True, False, 'default')])
def test_the_resolved_flag_picks_the_backward_kernel(msda_ref, monkeypatch, mode, flag, expected):
    fake = FakeExt()
    monkeypatch.setattr(ms_deform_attn._ExtState, 'module', fake)
    monkeypatch.setattr(ms_deform_attn._ExtState, 'tried', True)
    monkeypatch.setattr(ms_deform_attn, '_resolve_backend', lambda backend, device: 'cuda')
    value, shapes, start, loc, weight = msda_ref.random_inputs(1, 3, 2, 4, [(2, 3)], 2)
    inputs = [t.requires_grad_() for t in (value, loc, weight)]
    with deterministic_algorithms(mode):
        out = msda(inputs[0], shapes, start, inputs[1], inputs[2], deterministic=flag)
    # the mode at the call decides, not the mode at backward time
    with deterministic_algorithms(not mode):
        out.sum().backward()
    assert fake.calls == [expected]


def test_an_extension_built_before_the_deterministic_kernel_says_to_rebuild(msda_ref, monkeypatch):
    class OldExt(FakeExt):
        ms_deform_attn_backward_deterministic = None

    monkeypatch.setattr(ms_deform_attn._ExtState, 'module', OldExt())
    monkeypatch.setattr(ms_deform_attn._ExtState, 'tried', True)
    monkeypatch.setattr(ms_deform_attn, '_resolve_backend', lambda backend, device: 'cuda')
    value, shapes, start, loc, weight = msda_ref.random_inputs(1, 3, 2, 4, [(2, 3)], 2)
    out = msda(value.requires_grad_(), shapes, start, loc, weight, deterministic=True)
    with pytest.raises(RuntimeError, match='predates the deterministic MSDA backward; rebuild'):
        out.sum().backward()


# -- GPU: bitwise reproducibility and accuracy ----------------------------------------------------

def relative_error(x, ref):
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def gradients(value, shapes, start, loc, weight, grad_out, deterministic=True, **kw):
    inputs = [t.detach().requires_grad_() for t in (value, loc, weight)]
    out = msda(inputs[0], shapes, start, inputs[1], inputs[2], backend='cuda',
               deterministic=deterministic, **kw)
    return torch.autograd.grad(out, inputs, grad_out, allow_unused=True)


def colliding_case(dtype, dim, num_query=3000, heads=2):
    """Many queries whose points all fall on the same few pixels (the middle of a 4 x 4 map, a
    3 x 2 map): hundreds of updates per value row, the case where atomics reorder sums."""
    gen = torch.Generator().manual_seed(dim)
    shapes = [(4, 4), (3, 2)]
    value = torch.randn(2, 22, heads, dim, generator=gen)
    loc = 0.35 + 0.3 * torch.rand(2, num_query, heads, 2, 3, 2, generator=gen)
    weight = torch.rand(2, num_query, heads, 2, 3, generator=gen)
    grad_out = torch.randn(2, num_query, heads * dim, generator=gen)
    to = dict(device='cuda', dtype=dtype)
    return (value.to(**to), torch.tensor(shapes, device='cuda'),
            torch.tensor([0, 16], device='cuda'), loc.to(**to), weight.to(**to), grad_out.to(**to))


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize('dim', [32, 40])  # 40: several channel slabs per head in both kernels
@pytest.mark.parametrize('method', ['default', 'discrete'])
@on_gpu
def test_gradients_are_bitwise_reproducible_under_collisions(dtype, dim, method):
    case = colliding_case(dtype, dim)
    runs = [gradients(*case, method=method) for _ in range(3)]
    names = ('value', 'locations', 'weights')
    for name, first, *others in zip(names, *runs):
        if first is None:  # discrete sampling: no location gradient
            assert method == 'discrete' and name == 'locations'
            continue
        assert first.abs().sum() > 0, name
        assert all(torch.equal(first, other) for other in others), name


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@on_gpu
def test_each_batch_element_gets_the_gradients_it_gets_alone(dtype):
    """Batch elements are reduced separately: a batch's gradients are, bit for bit, those of its
    elements run one at a time (wrong per-element offsets would mix them up)."""
    value, shapes, start, loc, weight, grad_out = colliding_case(dtype, 32, num_query=500)
    batched = gradients(value, shapes, start, loc, weight, grad_out)
    for b in range(value.shape[0]):
        one = slice(b, b + 1)
        alone = gradients(value[one], shapes, start, loc[one], weight[one], grad_out[one])
        assert all(torch.equal(x[one], y) for x, y in zip(batched, alone)), b


@on_gpu
def test_torch_deterministic_mode_selects_the_deterministic_kernel():
    case = colliding_case(torch.float32, 32)
    explicit = gradients(*case, deterministic=True)
    with deterministic_algorithms(True):
        followed = gradients(*case, deterministic=None)
    assert all(torch.equal(a, b) for a, b in zip(explicit, followed))


DIMS = [32, 64, 32, 5, 16, 40, 128]


def random_case(seed):
    rng = random.Random(seed)
    levels = rng.randint(1, 4)
    uneven = seed % 2 == 1
    return dict(bs=rng.randint(1, 4), num_query=rng.randint(1, 200), heads=rng.randint(1, 8),
                dim=DIMS[seed % len(DIMS)], shapes=[(rng.randint(1, 20), rng.randint(1, 20))
                                                    for _ in range(levels)],
                points=[rng.randint(1, 6) for _ in range(levels)] if uneven else rng.randint(1, 6),
                dtype=(torch.float32, torch.bfloat16, torch.float16)[seed % 3],
                method='discrete' if seed % 5 == 4 else 'default', strided=seed % 4 == 2)


@pytest.mark.parametrize('seed', range(60))
@on_gpu
def test_matches_float64_reference_and_the_default_kernel(msda_ref, seed):
    case = random_case(seed)
    value, shapes, start, loc, weight, grad_out = msda_ref.case_inputs(case, seed, 0.2)
    num_points = None if isinstance(case['points'], int) else case['points']
    kw = dict(num_points=num_points, method=case['method'])
    deterministic = gradients(value, shapes, start, loc, weight, grad_out, True, **kw)
    default = gradients(value, shapes, start, loc, weight, grad_out, False, **kw)
    ref_inputs = [t.detach().double().requires_grad_() for t in (value, loc, weight)]
    ref_out = msda_ref.gather_msda(ref_inputs[0], case['shapes'], ref_inputs[1], ref_inputs[2],
                                   num_points, method=case['method'], cell_dtype=loc.dtype)
    ref = torch.autograd.grad(ref_out, ref_inputs, grad_out.double(), allow_unused=True)
    tol = TOLERANCE[case['dtype']]
    for name, grad, other, ref_grad, given in zip(('value', 'locations', 'weights'), deterministic,
                                                  default, ref, (value, loc, weight)):
        if ref_grad is None:  # discrete sampling: the locations are detached
            assert grad is None and other is None and case['method'] == 'discrete'
            continue
        assert grad.dtype == given.dtype and grad.shape == given.shape, name
        assert relative_error(grad, ref_grad) <= tol, (name, relative_error(grad, ref_grad))
        assert relative_error(grad, other.double()) <= tol, name


@pytest.mark.parametrize('method', ['default', 'discrete'])
@pytest.mark.parametrize('dim', [32, 5, 40])
@on_gpu
def test_gradcheck_float64_without_nondeterminism(msda_ref, dim, method):
    gen = torch.Generator().manual_seed(dim)
    value, shapes, start, loc, weight = msda_ref.random_inputs(
        2, 3, 2, dim, [(3, 4), (2, 3), (2, 2)], (3, 1, 2), device='cuda', margin=0.2,
        generator=gen)
    inputs = [value, weight] if method == 'discrete' else [value, loc, weight]
    inputs = [t.requires_grad_() for t in inputs]

    def fn(*args):
        v, l, w = (args[0], loc, args[1]) if method == 'discrete' else args
        return msda(v, shapes, start, l, w, backend='cuda', num_points=(3, 1, 2), method=method,
                    deterministic=True)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, nondet_tol=0.0)


@pytest.mark.parametrize('bs,num_query', [(1, 0), (0, 5), (37, 3)])
@on_gpu
def test_edge_sizes(msda_ref, bs, num_query):
    value, shapes, start, loc, weight = msda_ref.random_inputs(
        bs, num_query, 2, 32, [(3, 3), (1, 1)], 2, dtype=torch.float32, device='cuda')
    grad_out = torch.randn(bs, num_query, 64, device='cuda')
    grads = gradients(value, shapes, start, loc, weight, grad_out)
    if not (value.numel() and loc.numel()):  # nothing sampled: no or zero gradients
        assert all(g is None or not g.any() for g in grads)
        return
    ref_inputs = [t.detach().double().requires_grad_() for t in (value, loc, weight)]
    ref_out = msda_ref.gather_msda(ref_inputs[0], [(3, 3), (1, 1)], ref_inputs[1], ref_inputs[2])
    ref = torch.autograd.grad(ref_out, ref_inputs, grad_out.double())
    assert all(relative_error(g, r) <= 1e-5 for g, r in zip(grads, ref))


@on_gpu
def test_extra_memory_is_about_20_bytes_per_corner_of_one_batch_element(msda_ref):
    bs, num_query, heads, points = 2, 2000, 8, 4
    shapes = [(64, 64), (32, 32), (16, 16), (8, 8)]
    value, spatial_shapes, start, loc, weight = msda_ref.random_inputs(
        bs, num_query, heads, 32, shapes, points, dtype=torch.float32, device='cuda')
    inputs = [t.requires_grad_() for t in (value, loc, weight)]
    out = msda(inputs[0], spatial_shapes, start, inputs[1], inputs[2], deterministic=True)
    grad_out = torch.randn_like(out)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    torch.autograd.grad(out, inputs, grad_out)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    corners = num_query * heads * len(shapes) * points * 4  # one batch element
    results = 4 * (value.numel() + loc.numel() + weight.numel())
    rows = value.shape[1] * heads
    assert peak <= results + 22 * corners + 8 * rows + 2**21, (peak, results, corners)
