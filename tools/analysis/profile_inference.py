"""What bounds a detector's CUDA-graph inference time: kernels, their sum, the gaps, the largest.

For each config: the fused model (:func:`detr_plugin.deploy.fuse_for_inference`, random
weights) is captured in three CUDA graphs, images -> backbone, images -> backbone + neck and
images -> (boxes, scores, labels) (:class:`detr_plugin.deploy.End2EndDetector`), under the
chosen autocast dtype, for each ``--variants``: ``autocast`` (float32 weights, cast by autocast at
every call), ``stored`` (:func:`detr_plugin.deploy.store_weights_for_autocast`: the low-precision
weights stored once), ``stored+channels_last`` (also channels-last images and convolution
weights, so that cuDNN needs no layout transposes). For each graph the tool reports the replay
time (median of ``--iters``), and from a profile of ``--profile-iters`` replays: the kernels per
replay, the sum of their durations, the replay time not covered by a kernel (launch gaps /
dependencies between kernels), and the largest kernels. The differences between the three graphs attribute the time
to backbone, neck (hybrid encoder) and transformer + head::

    python tools/analysis/profile_inference.py configs/rtdetrv2/rtdetrv2_r18vd_8xb2-120e_coco.py \\
        --batch 1 --dtype bf16 --json $OUT/profile.json
"""
import argparse
import json
import os
import statistics
import sys
from collections import defaultdict
from typing import Callable, Dict, List

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchmark_model import DTYPES, cuda_graph  # noqa: E402


VARIANTS = ('autocast', 'stored', 'stored+channels_last')


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('configs', nargs='+')
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--shape', type=int, nargs=2, default=[640, 640], metavar=('H', 'W'))
    p.add_argument('--dtype', choices=list(DTYPES), default='bf16')
    p.add_argument('--iters', type=int, default=200, help='timed replays per graph')
    p.add_argument('--profile-iters', type=int, default=20, help='profiled replays per graph')
    p.add_argument('--top', type=int, default=12, help='largest kernels listed per graph')
    p.add_argument('--variants', nargs='+', choices=VARIANTS, default=list(VARIANTS))
    p.add_argument('--json', help='write the results here')
    return p.parse_args()


def stage_functions(config: str, args, variant: str) -> Dict[str, Callable[[], object]]:
    """{'backbone' | 'backbone+neck' | 'end2end': images -> outputs} of the fused model."""
    from detr_plugin.deploy import (End2EndDetector, fuse_for_inference,
                                    store_weights_for_autocast)
    from detr_plugin.utils import build_detector
    model = fuse_for_inference(build_detector(config).cuda().eval())
    net = End2EndDetector(model)
    h, w = args.shape
    images = torch.rand(args.batch, 3, h, w, generator=torch.Generator().manual_seed(0)).cuda()
    dtype = DTYPES[args.dtype]
    if variant != 'autocast':
        store_weights_for_autocast(model, dtype)
    if variant.endswith('channels_last'):
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    calls = {'backbone': lambda: model.backbone(images),
             'backbone+neck': lambda: model.extract_feat(images),
             'end2end': lambda: net(images)}

    def under_autocast(call):
        def fn():
            with torch.no_grad(), torch.autocast('cuda', dtype=dtype, enabled=dtype is not None,
                                                 cache_enabled=False):
                return call()
        return fn
    return {name: under_autocast(call) for name, call in calls.items()}


def replay_ms(replay: Callable[[], object], iters: int) -> float:
    """Median milliseconds of one replay, each timed with CUDA events."""
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_profile(replay: Callable[[], object], iters: int, top: int) -> dict:
    """Kernels per replay, their summed duration (ms), and the ``top`` largest by total time."""
    from torch.profiler import ProfilerActivity, profile
    replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            replay()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and not e.name.startswith(('Memcpy', 'Memset'))]
    total_us = defaultdict(float)
    count = defaultdict(int)
    for e in kernels:
        total_us[e.name] += e.time_range.elapsed_us()
        count[e.name] += 1
    largest = sorted(total_us, key=total_us.get, reverse=True)[:top]
    return dict(kernels=len(kernels) / iters,
                kernel_ms=sum(total_us.values()) / iters / 1000,
                largest=[dict(name=n[:90], ms=total_us[n] / iters / 1000,
                              calls=count[n] / iters) for n in largest])


def profile_config(config: str, args, variant: str) -> dict:
    result = dict(config=config, variant=variant, batch=args.batch, dtype=args.dtype,
                  shape=args.shape)
    for stage, fn in stage_functions(config, args, variant).items():
        replay = cuda_graph(fn)
        stats = kernel_profile(replay, args.profile_iters, args.top)
        stats['replay_ms'] = replay_ms(replay, args.iters)
        stats['not_in_kernels_ms'] = stats['replay_ms'] - stats['kernel_ms']
        result[stage] = stats
        print(f"{os.path.basename(config)} [{variant}] {stage}: replay "
              f"{stats['replay_ms']:.3f} ms, {stats['kernels']:.0f} kernels summing to "
              f"{stats['kernel_ms']:.3f} ms, {stats['not_in_kernels_ms']:.3f} ms outside kernels",
              flush=True)
    print('  largest kernels of end2end:')
    for k in result['end2end']['largest']:
        print(f"    {k['ms']:.4f} ms  x{k['calls']:.0f}  {k['name']}")
    return result


def main():
    args = parse_args()
    torch.backends.cudnn.benchmark = True
    results: List[dict] = [profile_config(c, args, v) for c in args.configs for v in args.variants]
    print(f'{torch.cuda.get_device_name()}, torch {torch.__version__}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                           results=results), f, indent=1)


if __name__ == '__main__':
    main()
