"""Training throughput as a user sees it: images/s and epoch time with the real data pipeline,
and of the model step alone, with peak memory and the loss reached.

    python tools/misc/make_coco_like_dataset.py --out data/coco_like --num-images 2000
    python tools/analysis/benchmark_training.py configs/rtdetr/rtdetr_r50vd_8xb2-72e_coco.py \\
        --data-root data/coco_like --batch 16 --workers 8 --amp bf16 --iters 500

(a) pipeline: the config's ``train_dataloader`` (its transforms, sampler and collate) reads the
COCO-like JPEGs of ``--data-root``; each iteration takes the next batch and runs
``model.train_step`` with the config's ``optim_wrapper`` (``AmpOptimWrapper`` with ``--amp``),
which is what mmengine's train loop does per iteration, hooks aside. The data preprocessor's
batch augments stay on: the config's multi-scale resolution schedule. Reported: images/s (median
over windows of ``--window`` iterations after ``--warmup``), the time per iteration spent blocked
on the loader, the epoch time for COCO train2017's 118,287 images at that rate, peak memory
(``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS on the CPU), and the loss
of the last window.
(b) model step: the same ``train_step`` on one batch of the loader held in device memory
(:func:`benchmark_rtdetr.interleaved_ms`), so (a) - (b) is the cost of the data pipeline.

The model starts from the config's initialisation with its backbone checkpoint left out (no
download) and seed ``--seed``; its class count is the dataset's (80).
``--original-root`` is the extension point for the original implementation's side in the same
run (its own loader, transforms and train step on the same files, from the same weights); it is
not implemented yet, and passing it is an error.
"""
import argparse
import os
import resource
import statistics
import sys
import time
from typing import Dict, List, NamedTuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_rtdetr import interleaved_ms  # noqa: E402

COCO_TRAIN_IMAGES = 118287
AMP_DTYPES = {'bf16': 'bfloat16', 'fp16': 'float16'}


class PipelineResult(NamedTuple):
    """Measurements of the data-pipeline run (a)."""
    images_per_s: float     # median over windows
    data_wait_ms: float     # median per iteration, host time blocked on the loader
    peak_mib: float         # peak device memory (GPU) or peak process RSS (CPU), MiB
    loss: float             # mean total loss over the last window
    steps: int              # iterations run, warm-up included


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config', help='training config (its train_dataloader, model, optim_wrapper)')
    p.add_argument('--data-root', required=True,
                   help='dataset written by tools/misc/make_coco_like_dataset.py')
    p.add_argument('--batch', type=int, default=16, help='images per step')
    p.add_argument('--workers', type=int, default=8, help='data loader worker processes')
    p.add_argument('--amp', choices=['none', *AMP_DTYPES], default='bf16',
                   help='automatic mixed precision dtype (none: fp32)')
    p.add_argument('--iters', type=int, default=200, help='measured iterations of (a) and (b)')
    p.add_argument('--warmup', type=int, default=20, help='iterations before measuring')
    p.add_argument('--window', type=int, default=10, help='iterations per images/s sample')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cuda', help="'cpu' only to check the script itself")
    p.add_argument('--original-root', default=None,
                   help='checkout of the original implementation (not implemented yet)')
    args = p.parse_args(argv)
    if args.original_root is not None:
        p.error('--original-root: the original side is not implemented yet')
    if min(args.iters, args.window, args.batch) < 1 or args.warmup < 0:
        p.error('--iters, --window and --batch must be >= 1, --warmup >= 0')
    return args


def benchmark_config(args: argparse.Namespace):
    """The config with the train loader reading ``--data-root`` at ``--batch``, no backbone
    checkpoint, and the model's class count set to the dataset's 80."""
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    loader = cfg.train_dataloader
    loader.update(batch_size=args.batch, num_workers=args.workers,
                  persistent_workers=args.workers > 0)
    ann_file = os.path.join(args.data_root, 'annotations', 'instances_train2017.json')
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f'--data-root: no {ann_file} (write it with '
                                'tools/misc/make_coco_like_dataset.py)')
    loader.dataset.update(data_root=args.data_root,
                          ann_file='annotations/instances_train2017.json',
                          data_prefix=dict(img='train2017/'))
    loader.dataset.pop('metainfo', None)  # COCO's 80 classes, the CocoDataset default
    cfg.model.backbone.init_cfg = None
    cfg.model.bbox_head.num_classes = 80
    optim = cfg.optim_wrapper
    if args.amp != 'none':
        optim.update(type='AmpOptimWrapper', dtype=AMP_DTYPES[args.amp])
    return cfg


def build(cfg, seed: int, device: str):
    """(model on ``device`` in train mode, optimizer wrapper, train dataloader)."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner

    from detr_plugin.registry import MODELS
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model = model.to(device).train()
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=seed)
    return model, wrapper, loader


def batches(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def synchronize(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def peak_mib(device: str) -> float:
    if device.startswith('cuda'):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux: KiB


def run_pipeline(model, wrapper, loader, args) -> PipelineResult:
    """(a): ``--warmup`` then ``--iters`` iterations of next batch + ``train_step``."""
    stream = batches(loader)
    waits: List[float] = []
    window_rates: List[float] = []
    losses: List[float] = []
    window_start, in_window = 0.0, 0
    last_step = args.warmup + args.iters - 1
    for step in range(last_step + 1):
        if step >= args.warmup and in_window == 0:
            synchronize(args.device)
            window_start = time.perf_counter()
        t = time.perf_counter()
        data = next(stream)
        waits.append((time.perf_counter() - t) * 1e3)
        log_vars = model.train_step(data, wrapper)
        losses.append(float(log_vars['loss'].detach()))  # a host wait, as the runner's logging
        if step >= args.warmup:
            in_window += 1
            if in_window == args.window or step == last_step:
                synchronize(args.device)
                window_rates.append(args.batch * in_window / (time.perf_counter() - window_start))
                in_window = 0
    last = losses[-min(args.window, args.iters):]
    return PipelineResult(statistics.median(window_rates),
                          statistics.median(waits[args.warmup:]), peak_mib(args.device),
                          sum(last) / len(last), len(losses))


def resident_batch(loader, device: str) -> Dict:
    """One batch of the loader with its images moved to ``device``."""
    data = next(iter(loader))
    return dict(data, inputs=[img.to(device) for img in data['inputs']])


def run_model_step(model, wrapper, loader, args) -> float:
    """(b): milliseconds per ``train_step`` on a batch held on the device (median)."""
    data = resident_batch(loader, args.device)
    return interleaved_ms(dict(ours=lambda: model.train_step(data, wrapper)), args.warmup,
                          args.iters, args.device, rounds=1)['ours']


def table(args, pipe: PipelineResult, step_ms: float) -> str:
    device = torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'
    memory = 'peak allocated' if args.device.startswith('cuda') else 'peak RSS'
    step_rate = args.batch / step_ms * 1e3
    epoch_min = COCO_TRAIN_IMAGES / pipe.images_per_s / 60
    return '\n'.join([
        f'{os.path.basename(args.config)}, batch {args.batch}, AMP {args.amp}, {device}, '
        f'torch {torch.__version__}, {args.workers} workers, {args.iters} iterations after '
        f'{args.warmup} warm-up',
        f'| implementation | pipeline images/s | data wait ms/iter | epoch min (118,287 images) '
        f'| model step images/s | model step ms | {memory} MiB | loss after {pipe.steps} steps |',
        '|---|---|---|---|---|---|---|---|',
        f'| ours | {pipe.images_per_s:.1f} | {pipe.data_wait_ms:.1f} | {epoch_min:.1f} | '
        f'{step_rate:.1f} | {step_ms:.1f} | {pipe.peak_mib:.0f} | {pipe.loss:.4f} |'])


def main(argv=None) -> None:
    args = parse_args(argv)
    from detr_plugin.utils import register_all_modules
    register_all_modules()
    cfg = benchmark_config(args)
    model, wrapper, loader = build(cfg, args.seed, args.device)
    if args.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    pipe = run_pipeline(model, wrapper, loader, args)
    step_ms = run_model_step(model, wrapper, loader, args)
    print(table(args, pipe, step_ms))


if __name__ == '__main__':
    main()
