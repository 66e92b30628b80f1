"""Training-step and inference time and peak memory of detectors built from configs.

Several configs in one run share the device, the inputs and the settings, so their figures can
be compared directly (e.g. ours next to mmdet's own DETR via ``mmdet::detr/...``). Weights are
random unless ``--weights`` is given (no checkpoint is downloaded); every image gets ``--boxes``
random ground-truth boxes.

Modes:
- ``train``: ``model.train_step`` (forward, loss with matching, backward, optimizer step).
- ``infer``: ``model.test_step`` on a batch of data samples, as mmdet's test loop runs it.
- ``deploy`` (our configs only): the model as images in, (boxes, scores, labels) out
  (:class:`detr_plugin.deploy.End2EndDetector`), BatchNorms and RepVGG branches folded
  (``--no-fuse`` keeps them), optionally captured in a CUDA graph (``--cuda-graph``) or compiled
  (``--compile``): the latency a deployed detector has.

    python tools/analysis/benchmark_model.py configs/detr/detr_r50_8xb2-150e_coco.py \\
        mmdet::detr/detr_r50_8xb2-150e_coco.py --mode train --shape 800 1216 --batch 2 --amp
    python tools/analysis/benchmark_model.py configs/rtdetr/rtdetr_r18vd_8xb2-72e_coco.py \\
        --mode deploy --shape 640 640 --batch 1 --dtype bf16 --cuda-graph
"""
import argparse
import importlib
import os
import statistics
import time
from typing import Callable, List, Optional

import torch
from mmdet.structures import DetDataSample
from mmengine.optim import build_optim_wrapper
from mmengine.structures import InstanceData

DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('configs', nargs='+', help='config files (mmdet::path for mmdet\'s own configs)')
    p.add_argument('--mode', choices=['train', 'infer', 'deploy'], default='train')
    p.add_argument('--weights', help='checkpoint to load (every config); default: random weights')
    p.add_argument('--trust-checkpoint', action='store_true',
                   help='read --weights with full unpickling, which can run code: only for files '
                   'you trust (by default only weights are read)')
    p.add_argument('--shape', type=int, nargs=2, default=[800, 1216], metavar=('H', 'W'))
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--boxes', type=int, default=12, help='ground-truth boxes per image')
    p.add_argument('--amp', action='store_true', help='automatic mixed precision (train)')
    p.add_argument('--dtype', choices=list(DTYPES), default='fp32',
                   help='autocast dtype; with --amp in train mode bf16 if unset')
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--iters', type=int, default=20)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--cuda-graph', action='store_true', help='deploy mode: replay a CUDA graph')
    p.add_argument('--compile', action='store_true', help='deploy mode: torch.compile the model')
    p.add_argument('--no-fuse', action='store_true',
                   help='deploy mode: keep BatchNorms and RepVGG branches unfolded')
    args = p.parse_args()
    if (args.cuda_graph or args.compile) and args.mode != 'deploy':
        p.error('--cuda-graph and --compile apply to --mode deploy')
    if args.cuda_graph and not args.device.startswith('cuda'):
        p.error(f'--cuda-graph needs a CUDA device; this run is on {args.device!r}'
                + ('' if torch.cuda.is_available() else ' (no CUDA device is available)'))
    return args


def resolve(config: str) -> str:
    """``pkg::rel/path.py`` -> the config shipped inside an installed OpenMMLab package."""
    if '::' not in config:
        return config
    package, relative = config.split('::', 1)
    root = os.path.dirname(importlib.import_module(package).__file__)
    return os.path.join(root, '.mim', 'configs', relative)


def build_model(config: str, device: str, weights: Optional[str] = None, trust: bool = False):
    """(config, model) of ``load_detector``; without ``weights`` random (``init_weights``)."""
    from detr_plugin.utils import load_detector
    model = load_detector(resolve(config), weights, device, trust=trust)
    return model.cfg, model


def random_batch(args, num_classes: int, device: str) -> dict:
    h, w = args.shape
    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(args.batch):
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g).to(device))
        xy = torch.rand(args.boxes, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
        wh = torch.rand(args.boxes, 2, generator=g) * torch.tensor([w * 0.2, h * 0.2]) + 4
        s = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1., 1.),
                                        pad_shape=(h, w), batch_input_shape=(h, w)))
        s.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + wh], 1).to(device),
            labels=torch.randint(0, num_classes, (args.boxes, ), generator=g).to(device))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def call_ms(fn: Callable, device: str) -> float:
    """Milliseconds of one call, device-synchronised (CUDA events) or by the host clock on CPU."""
    if not device.startswith('cuda'):
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def timed(fn: Callable, args, device: str) -> List[float]:
    """Milliseconds of each of ``args.iters`` calls after ``args.warmup``."""
    for _ in range(args.warmup):
        fn()
    return [call_ms(fn, device) for _ in range(args.iters)]


def cuda_graph(fn: Callable[[], object], warmup: int = 3) -> Callable[[], object]:
    """Captures ``fn`` (fixed inputs and shapes, no host synchronisation) in a CUDA graph after
    ``warmup`` eager calls on a side stream; returns the replay and the graph's outputs."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn()

    def replay():
        graph.replay()
        return outputs
    return replay


def deploy_fn(model, args) -> Callable[[], object]:
    """Images in, (boxes, scores, labels) out, as configured by --dtype / --cuda-graph / --compile."""
    from detr_plugin.deploy import End2EndDetector, fuse_for_inference
    if not args.no_fuse:
        fuse_for_inference(model)
    net = End2EndDetector(model)
    if args.compile:
        net = torch.compile(net)
    h, w = args.shape
    images = torch.randn(args.batch, 3, h, w, generator=torch.Generator().manual_seed(0)).to(args.device)
    dtype = DTYPES[args.dtype]

    def fn():
        with torch.no_grad(), torch.autocast(args.device.split(':')[0], dtype=dtype,
                                             enabled=dtype is not None, cache_enabled=False):
            return net(images)
    return cuda_graph(fn) if args.cuda_graph else fn


def benchmark(config: str, args) -> dict:
    cfg, model = build_model(config, args.device, args.weights, args.trust_checkpoint)
    num_classes = cfg.model.bbox_head.num_classes
    data = random_batch(args, num_classes, args.device)
    dtype = DTYPES[args.dtype]
    if args.mode == 'deploy':
        model.eval()
        fn = deploy_fn(model, args)
    elif args.mode == 'train':
        model.train()
        optim_cfg = cfg.optim_wrapper.copy()
        if args.amp:
            optim_cfg.update(type='AmpOptimWrapper', dtype=args.dtype if dtype else 'bfloat16')
            optim_cfg.pop('loss_scale', None)
        optim_wrapper = build_optim_wrapper(model, optim_cfg)
        fn = lambda: model.train_step(data, optim_wrapper)  # noqa: E731
    else:
        model.eval()

        def fn():
            with torch.no_grad(), torch.autocast(args.device.split(':')[0], dtype=dtype,
                                                 enabled=dtype is not None):
                model.test_step(data)
    if args.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    times = timed(fn, args, args.device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith('cuda') else float('nan')
    del model
    if args.device.startswith('cuda'):
        torch.cuda.empty_cache()
    median = statistics.median(times)
    return dict(config=config, median_ms=median, min_ms=min(times), peak_gib=peak,
                fps=args.batch * 1e3 / median)


def main():
    args = parse_args()
    from detr_plugin.utils import register_all_modules
    register_all_modules(init_default_scope=False)  # ours and mmdet's
    results = []
    for config in args.configs:
        try:
            results.append(benchmark(config, args))
        except Exception as e:  # a model that fails (e.g. no bf16 kernel) must not hide the others
            results.append(dict(config=config, error=f'{type(e).__name__}: {e}'.splitlines()[0]))
    dev = torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'
    prec = ('amp-' if args.amp else '') + args.dtype
    extras = [name for name, on in (('fused', args.mode == 'deploy' and not args.no_fuse),
                                    ('CUDA graph', args.cuda_graph), ('compiled', args.compile)) if on]
    print(f'\n{args.mode}, batch {args.batch}, {args.shape[0]}x{args.shape[1]}, {prec}, '
          + ''.join(f'{e}, ' for e in extras)
          + f'{args.boxes} boxes/img, {args.iters} iters after {args.warmup} warm-up, {dev}, '
          f'torch {torch.__version__}')
    print('| config | median ms | min ms | images/s | peak GiB | speed-up vs last |')
    print('|---|---|---|---|---|---|')
    last = results[-1].get('median_ms', float('nan'))
    for r in results:
        if 'error' in r:
            print(f"| {r['config']} | failed: {r['error'][:120]} | | | | |")
            continue
        print(f"| {r['config']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | {r['fps']:.1f} | "
              f"{r['peak_gib']:.2f} | {last / r['median_ms']:.2f}x |")


if __name__ == '__main__':
    main()
