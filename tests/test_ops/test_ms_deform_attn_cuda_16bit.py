"""The 16-bit CUDA backward (half, bfloat16): grad_value accumulated in fp32 one chunk of value's
rows at a time (detr_plugin/ops/csrc/ms_deform_attn_cuda.cu, grad_value_in_chunks), against the
float64 gather reference: every element within half a 16-bit ulp of the float64 value (fp32
accumulation, then one rounding), with chunks of whole batch elements, of several, and of pieces of
one; and the backward's peak memory, that of the 16-bit gradients plus at most 1/8 of an fp32
value. Skipped without a GPU or without the compiled extension."""
import pytest
import torch

from detr_plugin.ops import cuda_ext_available
from detr_plugin.ops import multi_scale_deformable_attention as msda

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not cuda_ext_available(),
                                 reason='needs a CUDA GPU and the compiled detr_plugin._ext')]

# significand bits after the leading one, smallest normal exponent
FORMAT = {torch.bfloat16: (7, -126), torch.float16: (10, -14)}
SMALL_SHAPES = [(12, 18), (6, 9), (3, 5), (2, 3)]  # the 2 x 3 level: hundreds of updates per row
MEDIUM_SHAPES = [(64, 96), (32, 48), (16, 24), (8, 12)]


def half_ulp(ref, dtype):
    """Half the spacing of dtype's numbers at |ref| (subnormal spacing below the normal range)."""
    bits, min_exp = FORMAT[dtype]
    exponent = torch.floor(torch.log2(ref.abs().clamp_min(2.0 ** min_exp))).clamp_min(min_exp)
    return 0.5 * torch.exp2(exponent - bits)


def gradients(msda_ref, value, spatial_shapes, start, loc, weight, grad_out, method):
    """(op's gradients, float64 reference's) of value, locations, weights; None where discrete."""
    shapes = [tuple(s) for s in spatial_shapes.tolist()]
    inputs = [t.detach().requires_grad_() for t in (value, loc, weight)]
    out = msda(inputs[0], spatial_shapes, start, inputs[1], inputs[2], backend='cuda',
               method=method)
    grads = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
    ref_inputs = [t.detach().double().requires_grad_() for t in (value, loc, weight)]
    ref_out = msda_ref.gather_msda(ref_inputs[0], shapes, ref_inputs[1], ref_inputs[2],
                                   method=method, cell_dtype=loc.dtype)
    ref_grads = torch.autograd.grad(ref_out, ref_inputs, grad_out.double(), allow_unused=True)
    return grads, ref_grads


# (bs, queries (None: one per value token), heads, dim, method): with 4 points the location and
# weight gradients of an encoder hold 0.75 of an fp32 value per batch element, so bs 2 takes one
# batch element per chunk and bs 3 two (the last chunk one); a decoder's few queries take 1/8 of
# the rows per chunk, i.e. pieces of a batch element; dim 48 runs the generic two-slab kernels.
CASES = [(2, None, 8, 32, 'default'), (3, None, 4, 32, 'default'), (2, 40, 8, 32, 'default'),
         (3, 40, 2, 64, 'default'), (2, 40, 2, 48, 'default'), (3, None, 4, 32, 'discrete'),
         (2, 40, 8, 32, 'discrete')]


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('bs,queries,heads,dim,method', CASES)
def test_grad_value_within_half_an_ulp_of_float64(msda_ref, dtype, bs, queries, heads, dim,
                                                   method):
    num_value = sum(h * w for h, w in SMALL_SHAPES)
    gen = torch.Generator().manual_seed(bs * 1000 + dim)
    value, spatial_shapes, start, loc, weight = msda_ref.random_inputs(
        bs, queries or num_value, heads, dim, SMALL_SHAPES, 4, dtype=dtype, device='cuda',
        margin=0.1, generator=gen)
    grad_out = torch.randn(bs, queries or num_value, heads * dim, generator=gen,
                           dtype=torch.float64).to('cuda', dtype)
    grads, ref_grads = gradients(msda_ref, value, spatial_shapes, start, loc, weight, grad_out,
                                 method)
    grad_value, ref = grads[0].double(), ref_grads[0]
    assert grads[0].dtype == dtype and grads[0].shape == value.shape
    # fp32 accumulation error (tiny) on top of one rounding to the 16-bit type
    bound = half_ulp(ref, dtype) + 1e-5 * ref.abs().max()
    excess = ((grad_value - ref).abs() / bound).max().item()
    assert excess <= 1.0, excess
    for grad, ref_grad in zip(grads[1:], ref_grads[1:]):
        if ref_grad is not None:
            error = ((grad.double() - ref_grad).norm() / ref_grad.norm()).item()
            assert error <= 1e-2, error


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('queries', [None, 300])
def test_16bit_backward_peak_memory(msda_ref, dtype, queries):
    """Encoder (queries = tokens): the fp32 scratch fits in the bytes of the location and weight
    gradients, allocated after it is freed, so the peak is the three 16-bit gradients alone (what
    16-bit atomics would need). Decoder (few queries): plus at most 1/8 of an fp32 value."""
    num_value = sum(h * w for h, w in MEDIUM_SHAPES)
    value, spatial_shapes, start, loc, weight = msda_ref.random_inputs(
        2, queries or num_value, 8, 32, MEDIUM_SHAPES, 4, dtype=dtype, device='cuda')
    inputs = [t.requires_grad_() for t in (value, loc, weight)]
    out = msda(inputs[0], spatial_shapes, start, inputs[1], inputs[2], backend='cuda')
    grad_out = torch.randn_like(out)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    grads = torch.autograd.grad(out, inputs, grad_out)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    gradients_16bit = 2 * (value.numel() + loc.numel() + weight.numel())
    scratch = 0 if queries is None else 4 * value.numel() / 8 + 4 * value[0, 0].numel()
    assert peak <= gradients_16bit + scratch + 2**20, (peak / 2**20, gradients_16bit / 2**20)
    ref_inputs = [t.detach().double().requires_grad_() for t in (value, loc, weight)]
    ref_out = msda_ref.gather_msda(ref_inputs[0], MEDIUM_SHAPES, ref_inputs[1], ref_inputs[2])
    ref_grad, = torch.autograd.grad(ref_out, ref_inputs[:1], grad_out.double())
    excess = ((grads[0].double() - ref_grad).abs()
              / (half_ulp(ref_grad, dtype) + 1e-5 * ref_grad.abs().max())).max().item()
    assert excess <= 1.0, excess
