"""Speed and memory of multi-scale deformable attention: our CUDA op, the grid_sample path and
mmcv's MultiScaleDeformableAttnFunction, in one run on one GPU.

For each case (Deformable DETR encoder and decoder, RT-DETR decoder), sampling-location kind
(``realistic``: reference points plus offsets of a few pixels; ``uniform``: anywhere on the map)
and implementation/dtype, it reports the median forward and forward+backward times (CUDA events)
twice: eager (one call at a time from Python, host overhead included, as a small model sees it)
and GPU (the host's work hidden behind a busy GPU: the kernels' own time, as a large model or a
CUDA graph sees it); then the peak extra memory and the speed-ups over mmcv in float32.

    python tools/analysis/benchmark_msda.py                       # everything (about a minute)
    python tools/analysis/benchmark_msda.py --cases enc-b2 --reps 100 --out msda.md
    python tools/analysis/benchmark_msda.py --cases rtdetr-dec-b8 --points 3,6,3   # RT-DETRv2
    python tools/analysis/benchmark_msda.py --cases rtdetr-dec-b8 --method discrete

``--points`` gives the sampling points per level: one number for every level (default 4), or one
per level (cases with another number of levels are skipped). mmcv's op takes one point count for
all levels and samples bilinearly only, so it is not timed for uneven counts or discrete sampling
(the output says so).
"""
import argparse
import functools
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

from detr_plugin.ops import multi_scale_deformable_attention

ENCODER_SHAPES = [(100, 150), (50, 75), (25, 38), (13, 19)]
RTDETR_SHAPES = [(80, 80), (40, 40), (20, 20)]
# name: batch, levels (H, W), queries (None: one per value token, as in the encoder)
CASES = {
    'enc-b2': dict(title='Deformable DETR encoder, batch 2', bs=2, shapes=ENCODER_SHAPES, queries=None),
    'enc-b8': dict(title='Deformable DETR encoder, batch 8', bs=8, shapes=ENCODER_SHAPES, queries=None),
    'dec-b2': dict(title='Deformable DETR decoder, batch 2', bs=2, shapes=ENCODER_SHAPES, queries=300),
    'rtdetr-dec-b8': dict(title='RT-DETR decoder, batch 8', bs=8, shapes=RTDETR_SHAPES, queries=500),
}
HEADS, DIM = 8, 32
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
MMCV_CANNOT = ("mmcv not timed: its MultiScaleDeformableAttnFunction takes one point count for "
               "all levels (locations (bs, Q, heads, L, P, 2)) and samples bilinearly only")
# implementation: dtypes it is timed in
IMPLS = {'ours': ['fp32', 'bf16'], 'grid_sample': ['fp32', 'bf16'], 'mmcv': ['fp32', 'fp16']}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cases', default=','.join(CASES), help=f'comma list of {list(CASES)}')
    p.add_argument('--locations', default='realistic,uniform', help='realistic,uniform')
    p.add_argument('--impls', default=','.join(IMPLS), help=f'comma list of {list(IMPLS)}')
    p.add_argument('--points', default='4',
                   help='sampling points per level: P for every level, or P_0,P_1,... per level')
    p.add_argument('--method', default='default', choices=['default', 'discrete'],
                   help='bilinear (default) or nearest-cell (RT-DETRv2 discrete) sampling')
    p.add_argument('--reps', type=int, default=30, help='timed repetitions (median reported)')
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--out', help='also write the markdown tables to this file')
    return p.parse_args()


def level_points(points: str, levels: int) -> Optional[List[int]]:
    """'4' -> [4] * levels; '3,6,3' -> [3, 6, 3] if levels == 3, else None (case skipped)."""
    counts = [int(n) for n in points.split(',')]
    if len(counts) == 1:
        return counts * levels
    return counts if len(counts) == levels else None


def make_inputs(case: dict, kind: str, points: List[int], seed: int = 0):
    """value, spatial_shapes, level_start_index, locations, weights (float32, on the GPU).

    realistic: encoder queries sit on their own token's pixel centre (the same normalized point
    on every level), decoder queries at random points; offsets ~ N(0, 2 pixels) per level.
    uniform: locations uniform in [0, 1]. The same P on every level: locations (bs, Q, heads, L,
    P, 2) and weights (bs, Q, heads, L, P); else (bs, Q, heads, sum(P_l), 2) / (.., sum(P_l)).
    """
    gen = torch.Generator().manual_seed(seed)
    shapes = case['shapes']
    sizes = [h * w for h, w in shapes]
    num_value, levels, bs = sum(sizes), len(shapes), case['bs']
    num_query = case['queries'] or num_value
    total = sum(points)
    value = torch.randn(bs, num_value, HEADS, DIM, generator=gen)
    if kind == 'uniform':
        loc = torch.rand(bs, num_query, HEADS, total, 2, generator=gen)
    else:
        if case['queries'] is None:
            centres = [torch.stack(torch.meshgrid((torch.arange(h) + 0.5) / h,
                                                  (torch.arange(w) + 0.5) / w, indexing='ij')[::-1],
                                   -1).reshape(-1, 2) for h, w in shapes]
            ref = torch.cat(centres).expand(bs, -1, -1)  # (bs, num_query, 2) as (x, y)
        else:
            ref = torch.rand(bs, num_query, 2, generator=gen) * 0.9 + 0.05
        # (total, 2) as (W_l, H_l) of each point's level
        size_xy = torch.tensor([(w, h) for (h, w), n in zip(shapes, points) for _ in range(n)],
                               dtype=torch.float32)
        offsets = torch.randn(bs, num_query, HEADS, total, 2, generator=gen) * 2.0
        loc = ref[:, :, None, None, :] + offsets / size_xy
    weights = torch.randn(bs, num_query, HEADS, total, generator=gen).softmax(-1)
    if len(set(points)) == 1:
        loc = loc.view(bs, num_query, HEADS, levels, points[0], 2)
        weights = weights.view(bs, num_query, HEADS, levels, points[0])
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    start = torch.tensor([sum(sizes[:i]) for i in range(levels)], dtype=torch.long)
    return [t.cuda() for t in (value, spatial_shapes, start, loc, weights)]


def implementation(name: str, points: List[int], method: str) -> Optional[Callable]:
    """fn(value, spatial_shapes, level_start_index, locations, weights) or None if unavailable."""
    if name in ('ours', 'grid_sample'):
        backend = 'cuda' if name == 'ours' else 'pytorch'
        return lambda *a: multi_scale_deformable_attention(*a, backend=backend, num_points=points,
                                                           method=method)
    if len(set(points)) > 1 or method != 'default':
        return None  # see MMCV_CANNOT
    try:
        from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction
    except Exception as err:  # mmcv missing or built without ops
        print(f'mmcv unavailable: {err!r}', file=sys.stderr)
        return None
    return lambda *a: MultiScaleDeformableAttnFunction.apply(*a, 64)  # mmcv's default im2col_step


def time_ms(fn: Callable, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def gpu_ms(fn: Callable, warmup: int, reps: int, calls: int = 10) -> float:
    """Median GPU time per call of ``calls`` back-to-back calls queued behind a spinning kernel.

    The spin (torch.cuda._sleep) lasts twice as long as the host needs to queue the calls, so the
    events time the GPU work alone, not the host's Python, autograd and launch overhead.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    host = time.perf_counter()
    for _ in range(calls):
        fn()
    host_ms = (time.perf_counter() - host) * 1e3
    cycles = int(2 * host_ms * spin_cycles_per_ms()) + 1000
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        torch.cuda._sleep(cycles)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


@functools.lru_cache(maxsize=None)
def spin_cycles_per_ms() -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(10_000_000)
    end.record()
    end.synchronize()
    return 10_000_000 / start.elapsed_time(end)


def peak_mib(fn: Callable) -> float:
    """Peak memory allocated during fn beyond what was allocated before it, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def measure(fn: Callable, inputs: List[torch.Tensor], dtype: torch.dtype, args) -> Dict[str, float]:
    value, spatial_shapes, start, loc, weights = inputs
    floats = [t.to(dtype) for t in (value, loc, weights)]
    grad_out = torch.randn(value.shape[0], loc.shape[1], HEADS * DIM, device='cuda', dtype=dtype)

    def forward():
        with torch.no_grad():
            return fn(floats[0], spatial_shapes, start, floats[1], floats[2])

    leaves = [t.detach().requires_grad_() for t in floats]

    def forward_backward():
        out = fn(leaves[0], spatial_shapes, start, leaves[1], leaves[2])
        # allow_unused: discrete sampling gives the locations no gradient
        return torch.autograd.grad(out, leaves, grad_out, allow_unused=True)

    result = dict(out=forward().float())
    result['fwd'] = time_ms(forward, args.warmup, args.reps)
    result['fwd_bwd'] = time_ms(forward_backward, args.warmup, args.reps)
    gpu_reps = max(3, args.reps // 3)  # each of 10 calls
    result['fwd_gpu'] = gpu_ms(forward, args.warmup, gpu_reps)
    result['fwd_bwd_gpu'] = gpu_ms(forward_backward, args.warmup, gpu_reps)
    result['mem_fwd'] = peak_mib(forward)
    result['mem_fwd_bwd'] = peak_mib(forward_backward)
    return result


def speedup(base: Optional[dict], row: dict, key: str) -> str:
    return f'{base[key] / row[key]:.2f}x' if base else 'n/a'


def main():
    args = parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.cuda.get_device_name()
    header = (f'device: {device}; torch {torch.__version__}; heads {HEADS} x dim {DIM}, '
              f'points per level {args.points}, {args.method} sampling; median of {args.reps} '
              '(CUDA events); memory = peak extra MiB')
    lines = [header, '']
    print(header, flush=True)
    for case_name in args.cases.split(','):
        case = CASES[case_name]
        points = level_points(args.points, len(case['shapes']))
        if points is None:
            print(f'{case_name}: skipped, --points {args.points} does not match its '
                  f'{len(case["shapes"])} levels', file=sys.stderr)
            continue
        impls = {name: implementation(name, points, args.method)
                 for name in args.impls.split(',')}
        if 'mmcv' in impls and (len(set(points)) > 1 or args.method != 'default'):
            print(MMCV_CANNOT, flush=True)
            lines += [MMCV_CANNOT, '']
        for kind in args.locations.split(','):
            inputs = make_inputs(case, kind, points)
            rows = []
            for impl, fn in impls.items():
                for dtype_name in IMPLS[impl]:
                    if fn is None:
                        continue
                    try:
                        r = measure(fn, inputs, DTYPES[dtype_name], args)
                    except (RuntimeError, TypeError) as err:  # e.g. a dtype mmcv lacks
                        print(f'{case_name} {kind} {impl} {dtype_name}: {str(err)[:120]}',
                              file=sys.stderr)
                        continue
                    rows.append(dict(impl=impl, dtype=dtype_name, **r))
                    torch.cuda.empty_cache()
            base = next((r for r in rows if r['impl'] == 'mmcv' and r['dtype'] == 'fp32'), None)
            ours = next((r for r in rows if r['impl'] == 'ours' and r['dtype'] == 'fp32'), None)
            queries = inputs[3].shape[1]
            block = [f'### {case["title"]}, {queries} queries, {kind} locations, points per '
                     f'level {points}, {args.method} sampling', '',
                     '| impl | dtype | fwd ms | fwd+bwd ms | fwd GPU ms | fwd+bwd GPU ms | fwd MiB '
                     '| fwd+bwd MiB | fwd vs mmcv fp32 (eager / GPU) '
                     '| fwd+bwd vs mmcv fp32 (eager / GPU) |',
                     '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|']
            for r in rows:
                block.append(f'| {r["impl"]} | {r["dtype"]} | {r["fwd"]:.3f} | {r["fwd_bwd"]:.3f} '
                             f'| {r["fwd_gpu"]:.3f} | {r["fwd_bwd_gpu"]:.3f} '
                             f'| {r["mem_fwd"]:.0f} | {r["mem_fwd_bwd"]:.0f} '
                             f'| {speedup(base, r, "fwd")} / {speedup(base, r, "fwd_gpu")} '
                             f'| {speedup(base, r, "fwd_bwd")} / {speedup(base, r, "fwd_bwd_gpu")} |')
            if base and ours:
                diff = (ours['out'] - base['out']).norm() / base['out'].norm()
                block.append(f'\nours fp32 vs mmcv fp32 output: relative difference {diff:.2e}')
            torch_path = next((r for r in rows
                               if r['impl'] == 'grid_sample' and r['dtype'] == 'fp32'), None)
            if torch_path and ours:
                diff = (ours['out'] - torch_path['out']).norm() / torch_path['out'].norm()
                block.append(f'\nours fp32 vs the PyTorch path (grid_sample) fp32: fwd '
                             f'{speedup(torch_path, ours, "fwd")} / '
                             f'{speedup(torch_path, ours, "fwd_gpu")}, fwd+bwd '
                             f'{speedup(torch_path, ours, "fwd_bwd")} / '
                             f'{speedup(torch_path, ours, "fwd_bwd_gpu")} (eager / GPU); output '
                             f'relative difference {diff:.2e}')
            block.append('')
            print('\n'.join(block), flush=True)
            lines += block
    if args.out:
        with open(args.out, 'w') as f:
            f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
