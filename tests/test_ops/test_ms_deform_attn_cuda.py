"""The CUDA kernels (detr_plugin._ext) against the float64 gather reference: outputs and the three
input gradients over >= 200 random shapes and dtypes, float64 gradcheck, strided inputs, edge
sizes. Skipped without a GPU or without the compiled extension."""
import random

import pytest
import torch

from detr_plugin.ops import MultiScaleDeformableAttention, cuda_ext_available
from detr_plugin.ops import multi_scale_deformable_attention as msda

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not cuda_ext_available(),
                                 reason='needs a CUDA GPU and the compiled detr_plugin._ext')]

TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float64: 1e-12}
DIMS = [32, 64, 32, 64, 1, 5, 8, 16, 24, 48, 96, 128]  # fast paths (32, 64) twice as often


def relative_error(x, ref):
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check_against_reference(msda_ref, value, spatial_shapes, start, loc, weight, grad_out,
                            num_points=None, method='default'):
    """Forward and backward of the CUDA op vs the float64 reference on the same (rounded) inputs.

    Discrete sampling: the reference rounds locations to cells in the op's dtype, and the
    locations must get no gradient."""
    shapes = [tuple(s) for s in spatial_shapes.tolist()]
    names = ('value', 'locations', 'weights')
    inputs = [t.detach().requires_grad_() for t in (value, loc, weight)]
    out = msda(inputs[0], spatial_shapes, start, inputs[1], inputs[2], backend='cuda',
               num_points=num_points, method=method)
    grads = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
    ref_inputs = [t.detach().double().requires_grad_() for t in (value, loc, weight)]
    ref_out = msda_ref.gather_msda(ref_inputs[0], shapes, ref_inputs[1], ref_inputs[2],
                                   num_points, method=method, cell_dtype=loc.dtype)
    ref_grads = torch.autograd.grad(ref_out, ref_inputs, grad_out.double(), allow_unused=True)
    if method == 'discrete':
        assert grads[1] is None and ref_grads[1] is None
        names, grads, ref_grads, inputs = (names[::2], grads[::2], ref_grads[::2], inputs[::2])
    tol = TOLERANCE[value.dtype]
    assert out.dtype == value.dtype and out.shape == ref_out.shape
    errors = {'output': relative_error(out, ref_out)}
    for name, grad, ref_grad, given in zip(names, grads, ref_grads, inputs):
        assert grad.dtype == given.dtype and grad.shape == given.shape
        errors[f'grad_{name}'] = relative_error(grad, ref_grad)
    assert all(e <= tol for e in errors.values()), errors
    return errors


def random_case(seed):
    rng = random.Random(seed)
    levels = rng.randint(1, 5)
    shapes = [(rng.randint(1, 24), rng.randint(1, 24)) for _ in range(levels)]
    dtype = (torch.float32, torch.float16, torch.bfloat16)[seed % 3]
    return dict(bs=rng.randint(1, 4), num_query=rng.randint(1, 160), heads=rng.randint(1, 8),
                dim=DIMS[(seed // 3) % len(DIMS)], shapes=shapes, points=rng.randint(1, 8),
                dtype=dtype, strided=rng.random() < 0.3)


@pytest.mark.parametrize('seed', range(240))
def test_random_cases_match_float64_reference(msda_ref, seed):
    case = random_case(seed)
    value, spatial_shapes, start, loc, weight, grad_out = msda_ref.case_inputs(case, seed, 0.1)
    check_against_reference(msda_ref, value, spatial_shapes, start, loc, weight, grad_out)


@pytest.mark.parametrize('dim', [32, 5, 40])
def test_gradcheck_float64(msda_ref, dim):
    gen = torch.Generator().manual_seed(dim)
    value, spatial_shapes, start, loc, weight = msda_ref.random_inputs(
        2, 3, 2, dim, [(3, 4), (2, 3)], 2, device='cuda', margin=0.2, generator=gen)
    inputs = [t.requires_grad_() for t in (value, loc, weight)]

    def fn(v, l, w):
        return msda(v, spatial_shapes, start, l, w, backend='cuda')

    # atomics make the summation order vary between runs: allow last-bit differences
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, nondet_tol=1e-10)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_points_on_borders_and_outside(msda_ref, dtype):
    height, width = 4, 8  # all locations exact in bfloat16: pixel edges, centres, borders, beyond
    xs = torch.tensor([0.0, 1.0, 1 / 16, -1 / 16, -1 / 8, 15 / 16, 1 + 1 / 16, 0.5, 3.0, -2.0, 1.125])
    ys = torch.tensor([0.0, 1.0, 1 / 8, -1 / 8, 7 / 8, 9 / 8, 0.5])
    pairs = torch.cartesian_prod(xs, ys)  # (n, 2) as (x, y)
    n = pairs.shape[0]
    gen = torch.Generator().manual_seed(0)
    value = torch.randn(1, height * width, 2, 32, generator=gen, dtype=torch.float64)
    loc = pairs.view(1, n, 1, 1, 1, 2).expand(1, n, 2, 1, 1, 2).double()
    weight = torch.rand(1, n, 2, 1, 1, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(1, n, 64, generator=gen, dtype=torch.float64)
    to = dict(device='cuda', dtype=dtype)
    check_against_reference(msda_ref, value.to(**to), torch.tensor([[height, width]], device='cuda'),
                            torch.tensor([0], device='cuda'), loc.to(**to), weight.to(**to),
                            grad_out.to(**to))


@pytest.mark.parametrize('bs,num_query', [(1, 0), (0, 5), (37, 3)])
def test_edge_sizes(msda_ref, bs, num_query):
    value, spatial_shapes, start, loc, weight = msda_ref.random_inputs(
        bs, num_query, 2, 32, [(3, 3), (1, 1)], 2, dtype=torch.float32, device='cuda')
    grad_out = torch.randn(bs, num_query, 64, device='cuda')
    if value.numel() and loc.numel():
        check_against_reference(msda_ref, value, spatial_shapes, start, loc, weight, grad_out)
    else:
        inputs = [t.requires_grad_() for t in (value, loc, weight)]
        out = msda(inputs[0], spatial_shapes, start, inputs[1], inputs[2], backend='cuda')
        assert out.shape == (bs, num_query, 64)
        grads = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
        assert all(g is None or g.abs().sum() == 0 for g in grads)


def test_module_cuda_matches_pytorch_backend():
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(embed_dims=64, num_heads=2, num_levels=2, num_points=4)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.1)
    attn = attn.cuda()
    shapes = torch.tensor([[10, 12], [5, 6]], device='cuda')
    start = torch.tensor([0, 120], device='cuda')
    query, value = torch.randn(2, 7, 64, device='cuda'), torch.randn(2, 150, 64, device='cuda')
    ref = torch.rand(2, 7, 1, 4, device='cuda')
    mask = torch.rand(2, 150, device='cuda') < 0.2
    outputs = []
    for backend in ('cuda', 'pytorch'):
        attn.backend = backend
        outputs.append(attn(query, ref, value, shapes, start, value_padding_mask=mask))
    assert relative_error(outputs[0], outputs[1].double()) < 1e-5


# -- per-level point counts and discrete sampling (RT-DETRv2) -------------------------------------

def random_uneven_case(seed):
    """Like random_case, with a point count per level (1-8) and discrete sampling in a quarter."""
    case = random_case(1000 + seed)
    rng = random.Random(seed)
    case['points'] = [rng.randint(1, 8) for _ in case['shapes']]
    case['method'] = 'discrete' if seed % 4 == 3 else 'default'
    return case


@pytest.mark.parametrize('seed', range(220))
def test_random_uneven_cases_match_float64_reference(msda_ref, seed):
    case = random_uneven_case(seed)
    value, spatial_shapes, start, loc, weight, grad_out = msda_ref.case_inputs(case, seed, 0.2)
    check_against_reference(msda_ref, value, spatial_shapes, start, loc, weight, grad_out,
                            num_points=case['points'], method=case['method'])


@pytest.mark.parametrize('dim', [32, 5, 40])
@pytest.mark.parametrize('method', ['default', 'discrete'])
def test_uneven_gradcheck_float64(msda_ref, dim, method):
    gen = torch.Generator().manual_seed(dim)
    value, spatial_shapes, start, loc, weight = msda_ref.random_inputs(
        2, 3, 2, dim, [(3, 4), (2, 3), (2, 2)], (3, 1, 2), device='cuda', margin=0.2,
        generator=gen)
    inputs = [t.requires_grad_() for t in (value, weight)]

    def fn(v, w):
        return msda(v, spatial_shapes, start, loc, w, backend='cuda', num_points=(3, 1, 2),
                    method=method)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, nondet_tol=1e-10)
    if method == 'default':  # the locations too (discrete has no location gradient)
        loc.requires_grad_()
        assert torch.autograd.gradcheck(
            lambda l: msda(value.detach(), spatial_shapes, start, l, weight.detach(),
                           backend='cuda', num_points=(3, 1, 2)),
            [loc], eps=1e-6, atol=1e-6, nondet_tol=1e-10)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_discrete_cells_match_the_pytorch_path_at_cell_boundaries(dtype):
    """Locations where rounding of loc * W + 0.5 in the op's dtype decides the cell: the kernel
    and the PyTorch path (the original's arithmetic) pick the same cells, so equal outputs."""
    size = 80
    centres = (torch.arange(size + 2, dtype=torch.float64) - 1.5) / size
    near = torch.cat([centres, centres - 1e-7, centres + 1e-7, torch.rand(200) * 1.2 - 0.1])
    loc = torch.stack([near, near.flip(0)], -1).to('cuda', dtype)  # (n, 2)
    n = loc.shape[0]
    value = torch.randn(1, size * size, 1, 32, device='cuda', dtype=dtype)
    args = (value, torch.tensor([[size, size]], device='cuda'), torch.tensor([0], device='cuda'),
            loc.view(1, n, 1, 1, 2), torch.ones(1, n, 1, 1, device='cuda', dtype=dtype))
    outputs = [msda(*args, backend=backend, num_points=(1,), method='discrete')
               for backend in ('cuda', 'pytorch')]
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize('method', ['default', 'discrete'])
def test_module_uneven_points_cuda_matches_pytorch_backend(method):
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(embed_dims=64, num_heads=2, num_levels=3,
                                         num_points=[3, 6, 3], method=method)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.1)
    attn = attn.cuda()
    shapes = torch.tensor([[10, 12], [5, 6], [3, 3]], device='cuda')
    start = torch.tensor([0, 120, 150], device='cuda')
    query, value = torch.randn(2, 7, 64, device='cuda'), torch.randn(2, 159, 64, device='cuda')
    ref = torch.rand(2, 7, 1, 4, device='cuda')
    outputs = []
    for backend in ('cuda', 'pytorch'):
        attn.backend = backend
        outputs.append(attn(query, ref, value, shapes, start))
    assert relative_error(outputs[0], outputs[1].double()) < 1e-5
