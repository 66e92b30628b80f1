"""Small forward + backward runs of every kernel layout, for compute-sanitizer:

    compute-sanitizer --tool memcheck --error-exitcode 1 python tests/test_ops/msda_memcheck_case.py

Covers the 16-byte fast paths (dim 32, 64), the generic path with one and several channel slabs
(dims 5, 16, 40), every dtype, points off the map and a non-contiguous input, each with the same
points on every level and with uneven counts per level, bilinear and discrete, each with the default
and the deterministic backward. Prints one line.
"""
import torch

from detr_plugin.ops import multi_scale_deformable_attention as msda


def run_case(dtype, dim, points=(3, 3, 3), method='default', deterministic=False, bs=2,
             num_query=9, heads=3):
    shapes = torch.tensor([[5, 7], [3, 4], [1, 2]], device='cuda')
    start = torch.tensor([0, 35, 47], device='cuda')
    value = torch.randn(bs, 49, heads, dim, device='cuda', dtype=dtype)
    loc = torch.rand(bs, num_query, heads, sum(points), 2, device='cuda', dtype=dtype) * 1.4 - 0.2
    weight = torch.rand(bs, num_query, heads, sum(points), device='cuda', dtype=dtype)
    value = value.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()  # strided
    loc.requires_grad_()
    weight.requires_grad_()
    out = msda(value, shapes, start, loc, weight, backend='cuda', num_points=points,
               method=method, deterministic=deterministic)
    out.backward(torch.randn_like(out))
    torch.cuda.synchronize()
    assert torch.isfinite(out).all() and torch.isfinite(value.grad).all()


def main():
    cases = 0
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for dim in (32, 64, 5, 16, 40):
            for points, method in (((3, 3, 3), 'default'), ((1, 6, 2), 'default'),
                                   ((2, 1, 4), 'discrete')):
                for deterministic in (False, True):
                    run_case(dtype, dim, points, method, deterministic)
                    cases += 1
    print(f'msda memcheck cases run: {cases}')


if __name__ == '__main__':
    main()
