"""Speed and memory of multi-scale deformable attention: our CUDA op, the grid_sample path and
mmcv's MultiScaleDeformableAttnFunction, and the whole attention module (ours and mmcv's), in one
run on one GPU.

**Op.** For each case (Deformable DETR encoder and decoder, RT-DETR decoder), sampling-location
kind (``realistic``: reference points plus offsets of a few pixels; ``uniform``: anywhere on the
map) and implementation/dtype (ours fp32 / bf16, ours with ``deterministic=True`` when the op has
that argument, the grid_sample path, mmcv fp32 / fp16), it reports the median forward and
forward+backward times (CUDA events) twice: eager (one call at a time from Python, host overhead
included, as a small model sees it) and GPU (the host's work hidden behind a busy GPU: the
kernels' own time, as a large model or a CUDA graph sees it); then the peak extra memory and the
speed-ups over mmcv in float32 and in float16.

**Module** (``--module-cases``): value projection through output projection, ours
(``detr_plugin.ops.MultiScaleDeformableAttention``, plus the residual that mmcv's module adds) and
mmcv's ``mmcv.ops.MultiScaleDeformableAttention`` (dropout 0) with the same weights (mmcv's state
dict loaded into ours; the outputs are compared), forward and forward+backward (gradients of query,
value and every parameter), in float32 and under autocast: ours bfloat16 against mmcv float16.
Ratios are mmcv time / ours. Encoders use point references (each query's pixel centre), decoders
box references.

    python tools/analysis/benchmark_msda.py                       # everything (about two minutes)
    python tools/analysis/benchmark_msda.py --cases enc-b2 --reps 100 --out msda.md
    python tools/analysis/benchmark_msda.py --cases rtdetr-dec-b8 --points 3,6,3   # RT-DETRv2
    python tools/analysis/benchmark_msda.py --cases rtdetr-dec-b8 --method discrete
    python tools/analysis/benchmark_msda.py --device cpu --cases tiny --module-cases tiny  # smoke

``--points`` gives the sampling points per level: one number for every level (default 4), or one
per level (cases with another number of levels are skipped). mmcv's op takes one point count for
all levels and samples bilinearly only, so it is not timed for uneven counts or discrete sampling
(the output says so); the module rows always use 4 points and bilinear sampling. On ``--device
cpu`` (a check that the script runs: the PyTorch path, mmcv's module on its PyTorch path, no GPU
columns, no memory) both modules use bfloat16 autocast.
"""
import argparse
import functools
import inspect
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from detr_plugin.ops import MultiScaleDeformableAttention, multi_scale_deformable_attention

ENCODER_SHAPES = [(100, 150), (50, 75), (25, 38), (13, 19)]
RTDETR_SHAPES = [(80, 80), (40, 40), (20, 20)]
# name: batch, levels (H, W), queries (None: one per value token, as in the encoder)
CASES = {
    'enc-b2': dict(title='Deformable DETR encoder, batch 2', bs=2, shapes=ENCODER_SHAPES, queries=None),
    'enc-b8': dict(title='Deformable DETR encoder, batch 8', bs=8, shapes=ENCODER_SHAPES, queries=None),
    'dec-b2': dict(title='Deformable DETR decoder, batch 2', bs=2, shapes=ENCODER_SHAPES, queries=300),
    'rtdetr-dec-b8': dict(title='RT-DETR decoder, batch 8', bs=8, shapes=RTDETR_SHAPES, queries=500),
    'tiny': dict(title='tiny smoke case', bs=2, shapes=[(8, 12), (4, 6)], queries=None),
}
DEFAULT_CASES = 'enc-b2,enc-b8,dec-b2,rtdetr-dec-b8'
DEFAULT_MODULE_CASES = 'enc-b2,enc-b8,rtdetr-dec-b8'
HEADS, DIM = 8, 32
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
MMCV_CANNOT = ("mmcv not timed: its MultiScaleDeformableAttnFunction takes one point count for "
               "all levels (locations (bs, Q, heads, L, P, 2)) and samples bilinearly only")
# the op's deterministic backward (a keyword of multi_scale_deformable_attention, where it exists)
HAS_DETERMINISTIC = ('deterministic'
                     in inspect.signature(multi_scale_deformable_attention).parameters)
# the level sizes on the host (a keyword of the op and module, where it exists): without them the
# op reads spatial_shapes back from the GPU at every call
HAS_HOST_SHAPES = 'shapes' in inspect.signature(multi_scale_deformable_attention).parameters
# implementation: dtypes it is timed in
IMPLS = {'ours': ['fp32', 'bf16'], 'ours_det': ['fp32', 'bf16'], 'grid_sample': ['fp32', 'bf16'],
         'mmcv': ['fp32', 'fp16']}
DEFAULT_IMPLS = ','.join(name for name in IMPLS if name != 'ours_det' or HAS_DETERMINISTIC)
MODULE_POINTS = 4
# module precisions: name -> autocast dtype of (ours, mmcv) on a GPU; None: float32, no autocast
MODULE_PRECISIONS = {'fp32': (None, None), 'amp': (torch.bfloat16, torch.float16)}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cases', default=DEFAULT_CASES, help=f'comma list of {list(CASES)}')
    p.add_argument('--locations', default='realistic,uniform', help='realistic,uniform')
    p.add_argument('--impls', default=DEFAULT_IMPLS, help=f'comma list of {list(IMPLS)}')
    p.add_argument('--points', default='4',
                   help='sampling points per level: P for every level, or P_0,P_1,... per level')
    p.add_argument('--method', default='default', choices=['default', 'discrete'],
                   help='bilinear (default) or nearest-cell (RT-DETRv2 discrete) sampling')
    p.add_argument('--module-cases', default=DEFAULT_MODULE_CASES,
                   help=f'comma list of {list(CASES)} for the module rows; empty: none')
    p.add_argument('--device', default='cuda', choices=['cuda', 'cpu'],
                   help='cpu: a smoke run of the script (PyTorch paths, no GPU columns)')
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


def pixel_centres(shapes) -> torch.Tensor:
    """(sum(H_l * W_l), 2): each token's pixel centre (x, y), normalized to [0, 1]."""
    return torch.cat([torch.stack(torch.meshgrid((torch.arange(h) + 0.5) / h,
                                                 (torch.arange(w) + 0.5) / w, indexing='ij')[::-1],
                                  -1).reshape(-1, 2) for h, w in shapes])


def make_inputs(case: dict, kind: str, points: List[int], device: torch.device, seed: int = 0):
    """value, spatial_shapes, level_start_index, locations, weights (float32, on device).

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
            ref = pixel_centres(shapes).expand(bs, -1, -1)  # (bs, num_query, 2) as (x, y)
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
    return [t.to(device) for t in (value, spatial_shapes, start, loc, weights)]


def implementation(name: str, points: List[int], method: str, device: torch.device,
                   shapes: List[Tuple[int, int]]) -> Optional[Callable]:
    """fn(value, spatial_shapes, level_start_index, locations, weights) or None if unavailable."""
    if name in ('ours', 'ours_det', 'grid_sample'):
        if name == 'ours_det' and not HAS_DETERMINISTIC:
            print('ours_det not timed: multi_scale_deformable_attention has no deterministic '
                  'argument', file=sys.stderr)
            return None
        # on the CPU 'ours' is the automatic choice, i.e. the PyTorch path
        backend = 'pytorch' if name == 'grid_sample' else 'cuda' if device.type == 'cuda' else None
        extra = dict(deterministic=True) if name == 'ours_det' else {}
        if HAS_HOST_SHAPES:
            extra['shapes'] = shapes
        return lambda *a: multi_scale_deformable_attention(*a, backend=backend, num_points=points,
                                                           method=method, **extra)
    if len(set(points)) > 1 or method != 'default':
        return None  # see MMCV_CANNOT
    if device.type != 'cuda':
        print("mmcv not timed: its op's backward is CUDA only", file=sys.stderr)
        return None
    try:
        from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction
    except Exception as err:  # mmcv missing or built without ops
        print(f'mmcv unavailable: {err!r}', file=sys.stderr)
        return None
    return lambda *a: MultiScaleDeformableAttnFunction.apply(*a, 64)  # mmcv's default im2col_step


def time_ms(fn: Callable, warmup: int, reps: int, device: torch.device) -> float:
    """Median wall time of one call (CUDA events on a GPU, the host clock on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type != 'cuda':
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
            continue
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
    events time the GPU work alone, not the host's Python, autograd and launch overhead (unless
    the calls themselves wait for the GPU, as mmcv's module does: then the host time is in).
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


def timings(forward: Callable, forward_backward: Callable, device: torch.device,
            args) -> Dict[str, Optional[float]]:
    """Eager and GPU medians of both callables and their peak extra MiB (None on the CPU)."""
    result = dict(out=forward().float())
    result['fwd'] = time_ms(forward, args.warmup, args.reps, device)
    result['fwd_bwd'] = time_ms(forward_backward, args.warmup, args.reps, device)
    cuda = device.type == 'cuda'
    gpu_reps = max(3, args.reps // 3)  # each of 10 calls
    result['fwd_gpu'] = gpu_ms(forward, args.warmup, gpu_reps) if cuda else None
    result['fwd_bwd_gpu'] = gpu_ms(forward_backward, args.warmup, gpu_reps) if cuda else None
    result['mem_fwd'] = peak_mib(forward) if cuda else None
    result['mem_fwd_bwd'] = peak_mib(forward_backward) if cuda else None
    return result


def measure(fn: Callable, inputs: List[torch.Tensor], dtype: torch.dtype, args) -> Dict:
    value, spatial_shapes, start, loc, weights = inputs
    floats = [t.to(dtype) for t in (value, loc, weights)]
    grad_out = torch.randn(value.shape[0], loc.shape[1], HEADS * DIM, device=value.device,
                           dtype=dtype)

    def forward():
        with torch.no_grad():
            return fn(floats[0], spatial_shapes, start, floats[1], floats[2])

    leaves = [t.detach().requires_grad_() for t in floats]

    def forward_backward():
        out = fn(leaves[0], spatial_shapes, start, leaves[1], leaves[2])
        # allow_unused: discrete sampling gives the locations no gradient
        return torch.autograd.grad(out, leaves, grad_out, allow_unused=True)

    return timings(forward, forward_backward, value.device, args)


def ratio(base: Optional[dict], row: Optional[dict], key: str) -> str:
    if not base or not row or base[key] is None or row[key] is None:
        return 'n/a'
    return f'{base[key] / row[key]:.2f}x'


def num(x: Optional[float], spec: str) -> str:
    return 'n/a' if x is None else format(x, spec)


def find(rows: List[dict], impl: str, dtype: str) -> Optional[dict]:
    return next((r for r in rows if r['impl'] == impl and r['dtype'] == dtype), None)


def op_block(case: dict, kind: str, points: List[int], args, rows: List[dict],
             queries: int) -> List[str]:
    """The markdown of one case's op rows: table, then output agreement and ratios."""
    mmcv32, mmcv16 = find(rows, 'mmcv', 'fp32'), find(rows, 'mmcv', 'fp16')
    block = [f'### {case["title"]}, {queries} queries, {kind} locations, points per '
             f'level {points}, {args.method} sampling', '',
             '| impl | dtype | fwd ms | fwd+bwd ms | fwd GPU ms | fwd+bwd GPU ms | fwd MiB '
             '| fwd+bwd MiB | fwd vs mmcv fp32 (eager / GPU) '
             '| fwd+bwd vs mmcv fp32 (eager / GPU) | fwd+bwd vs mmcv fp16 (eager / GPU) |',
             '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        block.append(f'| {r["impl"]} | {r["dtype"]} | {r["fwd"]:.3f} | {r["fwd_bwd"]:.3f} '
                     f'| {num(r["fwd_gpu"], ".3f")} | {num(r["fwd_bwd_gpu"], ".3f")} '
                     f'| {num(r["mem_fwd"], ".0f")} | {num(r["mem_fwd_bwd"], ".0f")} '
                     f'| {ratio(mmcv32, r, "fwd")} / {ratio(mmcv32, r, "fwd_gpu")} '
                     f'| {ratio(mmcv32, r, "fwd_bwd")} / {ratio(mmcv32, r, "fwd_bwd_gpu")} '
                     f'| {ratio(mmcv16, r, "fwd_bwd")} / {ratio(mmcv16, r, "fwd_bwd_gpu")} |')
    ours = find(rows, 'ours', 'fp32')
    if mmcv32 and ours:
        diff = (ours['out'] - mmcv32['out']).norm() / mmcv32['out'].norm()
        block.append(f'\nours fp32 vs mmcv fp32 output: relative difference {diff:.2e}')
    torch_path = find(rows, 'grid_sample', 'fp32')
    if torch_path and ours:
        diff = (ours['out'] - torch_path['out']).norm() / torch_path['out'].norm()
        block.append(f'\nours fp32 vs the PyTorch path (grid_sample) fp32: fwd '
                     f'{ratio(torch_path, ours, "fwd")} / {ratio(torch_path, ours, "fwd_gpu")}, '
                     f'fwd+bwd {ratio(torch_path, ours, "fwd_bwd")} / '
                     f'{ratio(torch_path, ours, "fwd_bwd_gpu")} (eager / GPU); output '
                     f'relative difference {diff:.2e}')
    for dtype in ('fp32', 'bf16'):
        det, plain = find(rows, 'ours_det', dtype), find(rows, 'ours', dtype)
        if det and plain:
            diff = (det['out'] - plain['out']).norm() / plain['out'].norm().clamp_min(1e-30)
            block.append(f'\nours deterministic {dtype}: fwd+bwd {ratio(det, plain, "fwd_bwd")} '
                         f'/ {ratio(det, plain, "fwd_bwd_gpu")} ours\' time (eager / GPU), '
                         f'peak {num(det["mem_fwd_bwd"], ".0f")} vs '
                         f'{num(plain["mem_fwd_bwd"], ".0f")} MiB; output relative difference '
                         f'{diff:.2e}')
    return block + ['']


def op_summary_row(title: str, kind: str, rows: List[dict], gpu: bool) -> str:
    """One line of the op summary: fwd+bwd ms of ours and mmcv in 32 and 16 bits, ratios, MiB."""
    key = 'fwd_bwd_gpu' if gpu else 'fwd_bwd'
    cells = [find(rows, 'ours', 'fp32'), find(rows, 'mmcv', 'fp32'), find(rows, 'ours', 'bf16'),
             find(rows, 'mmcv', 'fp16')]
    times = ' / '.join(num(c and c[key], '.3f') for c in cells)
    mem = ' / '.join(num(c and c['mem_fwd_bwd'], '.0f') for c in cells)
    dets = [find(rows, 'ours_det', dtype) for dtype in ('fp32', 'bf16')]
    det = ' / '.join(f'{num(d and d[key], ".3f")} ({ratio(d, c, key)} ours)'
                     for d, c in zip(dets, (cells[0], cells[2])))
    return (f'| {title} | {kind} | {times} | {ratio(cells[1], cells[0], key)} '
            f'| {ratio(cells[3], cells[2], key)} | {mem} | {det} |')


def run_op_case(case_name: str, args, device: torch.device, lines: List[str],
                summary: List[str]) -> None:
    case = CASES[case_name]
    points = level_points(args.points, len(case['shapes']))
    if points is None:
        print(f'{case_name}: skipped, --points {args.points} does not match its '
              f'{len(case["shapes"])} levels', file=sys.stderr)
        return
    impls = {name: implementation(name, points, args.method, device, case['shapes'])
             for name in args.impls.split(',')}
    if 'mmcv' in impls and (len(set(points)) > 1 or args.method != 'default'):
        print(MMCV_CANNOT, flush=True)
        lines += [MMCV_CANNOT, '']
    for kind in args.locations.split(','):
        inputs = make_inputs(case, kind, points, device)
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
                if device.type == 'cuda':
                    torch.cuda.empty_cache()
        block = op_block(case, kind, points, args, rows, inputs[3].shape[1])
        print('\n'.join(block), flush=True)
        lines += block
        summary.append(op_summary_row(case['title'], kind, rows, device.type == 'cuda'))


# -- the module -----------------------------------------------------------------------------------

def make_module_inputs(case: dict, device: torch.device, seed: int = 1):
    """query (bs, Q, C), value (bs, num_value, C), reference points (bs, Q, L, 2) pixel centres
    (encoders) or (bs, Q, L, 4) boxes (decoders), spatial_shapes, level_start_index."""
    gen = torch.Generator().manual_seed(seed)
    shapes, bs = case['shapes'], case['bs']
    sizes = [h * w for h, w in shapes]
    num_value, levels, channels = sum(sizes), len(shapes), HEADS * DIM
    num_query = case['queries'] or num_value
    query = torch.randn(bs, num_query, channels, generator=gen)
    value = torch.randn(bs, num_value, channels, generator=gen)
    if case['queries'] is None:
        ref = pixel_centres(shapes)[None, :, None, :].expand(bs, -1, levels, -1)
    else:
        centre = torch.rand(bs, num_query, 1, 2, generator=gen) * 0.8 + 0.1
        size = torch.rand(bs, num_query, 1, 2, generator=gen) * 0.25 + 0.05
        ref = torch.cat([centre, size], -1).expand(-1, -1, levels, -1)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    start = torch.tensor([sum(sizes[:i]) for i in range(levels)], dtype=torch.long)
    return [t.to(device) for t in (query, value, ref.contiguous(), spatial_shapes, start)]


def make_modules(levels: int, device: torch.device):
    """(ours, mmcv's) with the same random weights (mmcv's state dict loaded into ours), or None
    when mmcv's module cannot be imported."""
    try:
        from mmcv.ops import MultiScaleDeformableAttention as MmcvAttention
    except Exception as err:  # mmcv missing or built without ops
        print(f'mmcv unavailable: {err!r}', file=sys.stderr)
        return None
    gen = torch.Generator().manual_seed(2)
    theirs = MmcvAttention(embed_dims=HEADS * DIM, num_heads=HEADS, num_levels=levels,
                           num_points=MODULE_POINTS, dropout=0.0, batch_first=True)
    with torch.no_grad():  # offsets of about a pixel around the initial circle, peaked weights
        for linear, std in ((theirs.sampling_offsets, 0.05), (theirs.attention_weights, 0.05)):
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen) * std)
            linear.bias.add_(torch.randn(linear.bias.shape, generator=gen) * 0.1)
    backend = 'cuda' if device.type == 'cuda' else None
    ours = MultiScaleDeformableAttention(HEADS * DIM, HEADS, levels, MODULE_POINTS,
                                         backend=backend)
    ours.load_state_dict(theirs.state_dict())
    return ours.to(device), theirs.to(device)


def measure_module(module, call: Callable, leaves: List[torch.Tensor],
                   autocast: Optional[torch.dtype], args) -> Dict:
    """call(query, value) under autocast (None: float32); fwd+bwd: gradients of both and of every
    parameter."""
    device = leaves[0].device
    params = [p for p in module.parameters() if p.requires_grad]

    def run():
        with torch.autocast(device.type, dtype=autocast or torch.float32,
                            enabled=autocast is not None):
            return call(*leaves)

    grad_out = torch.randn_like(run().float())

    def forward():
        with torch.no_grad():
            return run()

    def forward_backward():
        out = run()
        return torch.autograd.grad(out, leaves + params, grad_out.to(out.dtype))

    return timings(forward, forward_backward, device, args)


def module_amp_dtypes(device: torch.device):
    """Autocast dtypes of (ours, mmcv): bfloat16 / float16 on a GPU, bfloat16 for both on the CPU
    (whose float16 grid_sample is not the comparison we want)."""
    ours, theirs = MODULE_PRECISIONS['amp']
    return (ours, theirs) if device.type == 'cuda' else (torch.bfloat16, torch.bfloat16)


def run_module_case(case_name: str, args, device: torch.device, lines: List[str],
                    summary: List[str]) -> None:
    case = CASES[case_name]
    modules = make_modules(len(case['shapes']), device)
    if modules is None:
        return
    ours, theirs = modules
    query, value, ref, shapes, start = make_module_inputs(case, device)
    host = dict(shapes=case['shapes']) if HAS_HOST_SHAPES else {}
    leaves = [query.detach().requires_grad_(), value.detach().requires_grad_()]
    calls = {
        # mmcv's module adds the residual (identity = query); ours leaves it to the layer
        'ours': (ours, lambda q, v: ours(q, ref, v, shapes, start, **host) + q),
        'mmcv': (theirs, lambda q, v: theirs(q, value=v, reference_points=ref,
                                             spatial_shapes=shapes, level_start_index=start)),
    }
    amp = dict(zip(('ours', 'mmcv'), module_amp_dtypes(device)))
    rows = []
    for precision in MODULE_PRECISIONS:
        for impl, (module, call) in calls.items():
            autocast = amp[impl] if precision == 'amp' else None
            try:
                r = measure_module(module, call, leaves, autocast, args)
            except (RuntimeError, TypeError) as err:
                print(f'module {case_name} {impl} {precision}: {str(err)[:160]}', file=sys.stderr)
                continue
            dtype = {None: 'fp32', torch.bfloat16: 'bf16 autocast',
                     torch.float16: 'fp16 autocast'}[autocast]
            rows.append(dict(impl=impl, precision=precision, dtype=dtype, **r))
            if device.type == 'cuda':
                torch.cuda.empty_cache()
    queries = query.shape[1]
    block = [f'### Module: {case["title"]}, {queries} queries, {MODULE_POINTS} points, '
             f'value projection through output projection', '',
             '| impl | precision | fwd ms | fwd+bwd ms | fwd GPU ms | fwd+bwd GPU ms | fwd MiB '
             '| fwd+bwd MiB |', '|---|---|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        block.append(f'| {r["impl"]} | {r["dtype"]} | {r["fwd"]:.3f} | {r["fwd_bwd"]:.3f} '
                     f'| {num(r["fwd_gpu"], ".3f")} | {num(r["fwd_bwd_gpu"], ".3f")} '
                     f'| {num(r["mem_fwd"], ".0f")} | {num(r["mem_fwd_bwd"], ".0f")} |')
    key = 'fwd_bwd_gpu' if device.type == 'cuda' else 'fwd_bwd'
    cells = []
    for precision in MODULE_PRECISIONS:
        mine = next((r for r in rows if r['impl'] == 'ours' and r['precision'] == precision), None)
        base = next((r for r in rows if r['impl'] == 'mmcv' and r['precision'] == precision), None)
        if mine and base:
            diff = (mine['out'] - base['out']).norm() / base['out'].norm()
            block.append(f'\nmmcv / ours, {precision} ({mine["dtype"]} vs {base["dtype"]}): fwd '
                         f'{ratio(base, mine, "fwd")} / {ratio(base, mine, "fwd_gpu")}, fwd+bwd '
                         f'{ratio(base, mine, "fwd_bwd")} / {ratio(base, mine, "fwd_bwd_gpu")} '
                         f'(eager / GPU); output relative difference {diff:.2e}')
        cells += [f'{num(mine and mine[key], ".3f")} / {num(base and base[key], ".3f")}',
                  ratio(base, mine, key),
                  f'{num(mine and mine["mem_fwd_bwd"], ".0f")} / '
                  f'{num(base and base["mem_fwd_bwd"], ".0f")}']
    if device.type == 'cuda':
        block.append("\nmmcv's module reads spatial_shapes on the host at every call (an assert), "
                     'a wait for the GPU: its GPU column includes host time.')
    block.append('')
    print('\n'.join(block), flush=True)
    lines += block
    summary.append(f'| {case["title"]} | ' + ' | '.join(cells) + ' |')


def summary_tables(op_rows: List[str], module_rows: List[str], gpu: bool) -> List[str]:
    which = 'GPU' if gpu else 'eager'
    out = []
    if op_rows:
        out += ['### Summary: op, forward+backward', '',
                f'| case | locations | {which} ms: ours fp32 / mmcv fp32 / ours bf16 / mmcv fp16 '
                '| ours fp32 vs mmcv fp32 | ours bf16 vs mmcv fp16 | peak MiB: ours fp32 / mmcv '
                'fp32 / ours bf16 / mmcv fp16 | deterministic fp32 / bf16 ms (x ours\' time) |',
                '|---|---|---|---:|---:|---|---|', *op_rows, '']
    if module_rows:
        out += ['### Summary: module, forward+backward (ratios = mmcv time / ours)', '',
                f'| case | fp32 {which} ms: ours / mmcv | fp32 ratio | fp32 peak MiB: ours / mmcv '
                f'| autocast {which} ms: ours / mmcv | autocast ratio '
                '| autocast peak MiB: ours / mmcv |',
                '|---|---|---:|---|---|---:|---|', *module_rows, '']
    return out


def main():
    args = parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        name = torch.cuda.get_device_name()
    else:
        name = 'CPU (smoke run: PyTorch paths, no GPU columns, no memory)'
    header = (f'device: {name}; torch {torch.__version__}; heads {HEADS} x dim {DIM}, '
              f'points per level {args.points}, {args.method} sampling; median of {args.reps} '
              '(CUDA events); memory = peak extra MiB; deterministic op argument: '
              f'{"yes" if HAS_DETERMINISTIC else "no"}')
    lines = [header, '']
    print(header, flush=True)
    op_rows, module_rows = [], []
    for case_name in filter(None, args.cases.split(',')):
        run_op_case(case_name, args, device, lines, op_rows)
    for case_name in filter(None, args.module_cases.split(',')):
        run_module_case(case_name, args, device, lines, module_rows)
    summary = summary_tables(op_rows, module_rows, device.type == 'cuda')
    print('\n'.join(summary), flush=True)
    lines += summary
    if args.out:
        with open(args.out, 'w') as f:
            f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
