"""Training throughput as a user sees it: images/s and epoch time with the real data pipeline,
and of the model step alone, with peak memory and the loss reached; ours and, optionally, the
original implementation's in the same run.

    python tools/misc/make_coco_like_dataset.py --out data/coco_like --num-images 2000
    python tools/analysis/benchmark_training.py configs/rtdetrv2/rtdetrv2_r50vd_8xb2-72e_coco.py \\
        --data-root data/coco_like --batch 16 --workers 8 --amp bf16 --iters 500 \\
        --original-root /path/to/rtdetrv2_pytorch
    python tools/analysis/benchmark_training.py configs/dfine/dfine_hgnetv2-s_8xb4-132e_coco.py \\
        --data-root data/coco_like --batch 16 --workers 8 --amp bf16 --iters 500 \\
        --original-root /path/to/D-FINE

(a) pipeline: the config's ``train_dataloader`` (its transforms, sampler and collate) reads the
COCO-like JPEGs of ``--data-root``; each iteration takes the next batch and runs
``model.train_step`` with the config's ``optim_wrapper`` (``AmpOptimWrapper`` with ``--amp``),
which is what mmengine's train loop does per iteration, hooks aside. The data preprocessor's
batch augments stay on: the config's multi-scale resolution schedule. Reported: images/s (median
over windows of ``--window`` iterations after ``--warmup``), the time per iteration spent blocked
on the loader, the epoch time for COCO train2017's 118,287 images at that rate, peak memory, and
the mean loss of the last window.
(b) model step: the same step (``--step-iters`` times) on one batch of the loader held in device
memory (:func:`benchmark_rtdetr.interleaved_ms`), so (a) - (b) is the cost of the data pipeline.

Ours starts from the config's initialisation (no backbone checkpoint, no download) with seed
``--seed``; its class count is the dataset's (80); ``--cfg-options`` edits its config (e.g.
``model.channels_last=True``; ``--variant`` adds a row for ours with more settings, same
weights and data), and its steps run with cuDNN's autotuner as the config's
``env_cfg.cudnn_benchmark`` says (the runner's setting; the original's steps run without it, as
its train script does); a config's ``AugmentationWindowHook`` (DEIM's epoch windows) is applied as
the runner applies it before epoch 0. With ``--original-root`` (the COCO configs of
:data:`benchmark_rtdetr.FAMILIES` for RT-DETRv2, D-FINE and DEIM-D-FINE: a checkout of
lyuwenyu/RT-DETR's ``rtdetrv2_pytorch``, Peterande/D-FINE or ShihuaHuang95/DEIM, which import
torchvision, faster_coco_eval, scipy, pyyaml and tensorboard), the original runs beside ours,
in turns of ``--iters / --rounds`` iterations: its model from its YAML config with the weights of
:func:`benchmark_rtdetr.original_model`, converted into ours by the family's converter (same
weights); its own train loader (``CocoDetection``, its transforms, ``BatchImageCollateFunction``'s
multi-scale) on the same files at the same batch, shuffled and augmented from ``--seed``, at
epoch 0 throughout (``set_epoch(0)``, as its solver before the first epoch: DEIM then runs no
Mosaic, MixUp, photometric distortion, zoom-out or IoU crop, which its policy starts at epoch 4,
and our DEIM configs' window hook does the same); its step as its ``det_engine.train_one_epoch``
takes it (the forward under autocast, the criterion outside it with the engine's epoch / step
arguments, D-FINE's and DEIM's read-back of non-finite boxes under AMP, a gradient scaler,
gradient clipping at its YAML's ``clip_max_norm``, AdamW with its YAML's parameter groups from
its ``get_optim_params``). DEIM's own transforms override only the names torchvision's v2
``Transform`` had before 0.21 (``_transform``, ``_get_params``; its issue #33): they are given the
new names too. Neither side runs EMA or a learning-rate schedule. Peak memory on a GPU is, per
side, its weights, gradients and optimizer state plus the largest rise of
``torch.cuda.max_memory_allocated`` within its turns; on the CPU the process's peak RSS, shared
by both sides.
"""
import argparse
import importlib
import os
import resource
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch
from mmengine.config import DictAction

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # benchmark_rtdetr, imported where used
COCO_TRAIN_IMAGES = 118287
AMP_DTYPES = {'bf16': 'bfloat16', 'fp16': 'float16'}  # --amp: torch dtype name


class Side(NamedTuple):
    """One implementation under test."""
    name: str
    stream: Iterator                # its loader's batches, epoch after epoch
    step: Callable[[Any], float]    # one training step on a batch; returns the total loss
    resident: Any                   # one batch already on the device, for the model step alone
    state_bytes: int                # weights, gradients and optimizer state


class Record(NamedTuple):
    """What the pipeline run (a) of one side collects."""
    waits: List[float]       # ms blocked on the loader, per iteration
    rates: List[float]       # images/s, per window
    losses: List[float]      # total loss, per iteration
    peak_rise: List[float]   # bytes above the allocation at the start of each turn (GPU)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config', help='training config (its train_dataloader, model, optim_wrapper)')
    p.add_argument('--data-root', required=True,
                   help='dataset written by tools/misc/make_coco_like_dataset.py')
    p.add_argument('--batch', type=int, default=16, help='images per step')
    p.add_argument('--workers', type=int, default=8, help='data loader workers (per side)')
    p.add_argument('--amp', choices=['none', *AMP_DTYPES], default='bf16',
                   help='automatic mixed precision dtype (none: fp32)')
    p.add_argument('--iters', type=int, default=200, help='measured iterations of (a)')
    p.add_argument('--step-iters', type=int, default=None,
                   help='measured iterations of (b) (default: --iters)')
    p.add_argument('--warmup', type=int, default=20, help='iterations before measuring')
    p.add_argument('--window', type=int, default=10, help='iterations per images/s sample')
    p.add_argument('--rounds', type=int, default=5,
                   help='turns per side (each runs iters / rounds iterations per turn)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                   help='override settings of the config (ours), as tools/train.py does')
    p.add_argument('--variant', nargs='+', action=DictAction, default={},
                   help='one more side: ours with these settings on top of --cfg-options '
                        '(same weights and data), e.g. model.cuda_graph=True')
    p.add_argument('--device', default='cuda', help="'cpu' only to check the script itself")
    p.add_argument('--original-root', default=None,
                   help='checkout of the config family\'s original (rtdetrv2_pytorch, D-FINE, '
                        'DEIM): run it beside ours')
    args = p.parse_args(argv)
    if args.step_iters is None:
        args.step_iters = args.iters
    if min(args.iters, args.step_iters, args.window, args.batch, args.rounds) < 1 \
            or args.warmup < 0:
        p.error('--iters, --step-iters, --window, --batch and --rounds must be >= 1, '
                '--warmup >= 0')
    if args.original_root is not None and original_of(args.config) is None:
        from benchmark_rtdetr import FAMILIES
        titles = ', '.join(FAMILIES[f.version].title for f in ORIGINALS)
        p.error(f'--original-root: {args.config} is not a COCO config of the families with an '
                f'original side ({titles}; tools/analysis/benchmark_rtdetr.py FAMILIES)')
    return args


class OriginalFamily(NamedTuple):
    """How the original of one family of :data:`benchmark_rtdetr.FAMILIES` is run."""
    version: str         # its key there
    package: str         # the original's top-level package, holding data/ and core/
    checks_boxes: bool   # its engine's AMP step reads back whether the boxes are finite


ORIGINALS = (OriginalFamily('v2', 'src', False), OriginalFamily('dfine', 'src', True),
             OriginalFamily('deim', 'engine', True))


def original_of(config: str) -> Optional[Tuple[OriginalFamily, str]]:
    """The family and model name (``r18``, ``s``...) whose COCO config is ``config``, else
    None."""
    from benchmark_rtdetr import FAMILIES
    path = os.path.relpath(os.path.abspath(config), os.path.join(HERE, '..', '..'))
    return next(((family, name) for family in ORIGINALS
                 for name, (ours, _) in FAMILIES[family.version].models.items() if ours == path),
                None)


def benchmark_config(args: argparse.Namespace, variant: Optional[dict] = None):
    """The config with ``--cfg-options`` (and ``variant``), the train loader reading
    ``--data-root`` at ``--batch``, no backbone checkpoint, and the model's class count set to
    the dataset's 80."""
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    cfg.merge_from_dict(variant or {})
    loader = cfg.train_dataloader
    loader.update(batch_size=args.batch, num_workers=args.workers,
                  persistent_workers=args.workers > 0)
    ann_file = os.path.join(args.data_root, 'annotations', 'instances_train2017.json')
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f'--data-root: no {ann_file} (write it with '
                                'tools/misc/make_coco_like_dataset.py)')
    dataset = loader.dataset
    while 'dataset' in dataset:  # through wrappers (DEIM's MultiImageMixDataset)
        dataset = dataset.dataset
    dataset.update(data_root=args.data_root, ann_file='annotations/instances_train2017.json',
                   data_prefix=dict(img='train2017/'))
    dataset.pop('metainfo', None)  # COCO's 80 classes, the CocoDataset default
    cfg.model.backbone.init_cfg = None
    cfg.model.bbox_head.num_classes = 80
    if args.amp != 'none':
        cfg.optim_wrapper.update(type='AmpOptimWrapper', dtype=AMP_DTYPES[args.amp])
    return cfg


def forever(loader) -> Iterator:
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the weights, their gradients (one per trainable weight) and optimizer state."""
    params = sum(p.numel() * p.element_size() * (1 + p.requires_grad)
                 for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    states = sum(t.numel() * t.element_size() for st in optimizer.state.values()
                 for t in st.values() if torch.is_tensor(t))
    return params + buffers + states


def our_side(cfg, args, weights: Optional[Dict[str, torch.Tensor]], name: str = 'ours') -> Side:
    """Our model (``weights`` if given, else the config's seeded initialisation), the config's
    optimizer wrapper and train loader."""
    from mmengine.logging import MessageHub
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner
    from mmengine.utils.dl_utils import set_multi_processing

    from detr_plugin.registry import MODELS
    torch.manual_seed(args.seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    if weights is not None:
        model.load_state_dict(weights, strict=True)
    model = model.to(args.device).train()
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    # as Runner.setup_env: the workers inherit OpenCV's thread count (0: single-threaded), or
    # each would run OpenCV on every core of the host
    set_multi_processing(**cfg.get('env_cfg', {}).get('mp_cfg', {}))
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=args.seed)
    first_epoch_windows(cfg, model, loader)
    first = next(iter(loader))
    resident = dict(first, inputs=[img.to(args.device) for img in first['inputs']])

    hub, steps = MessageHub.get_current_instance(), iter(range(2**62))
    cudnn_benchmark = bool(cfg.get('env_cfg', {}).get('cudnn_benchmark', False))

    def step(data) -> float:
        # the runner sets cuDNN's autotuner from env_cfg; the original leaves it off
        torch.backends.cudnn.benchmark = cudnn_benchmark
        # the iteration count, as the runner's RuntimeInfoHook sets it (batch augments read it)
        hub.update_info('iter', next(steps))
        # the float() is a host wait, as the runner's per-iteration logging is
        return float(model.train_step(data, wrapper)['loss'].detach())
    step(resident)  # creates the optimizer state
    return Side(name, forever(loader), step, resident, state_bytes(model, wrapper.optimizer))


def first_epoch_windows(cfg, model: torch.nn.Module, loader) -> None:
    """The config's ``AugmentationWindowHook`` sets, as before the runner's epoch 0, the
    transforms and batch augments that epoch runs (a stand-in runner: loader, model, epoch 0)."""
    from types import SimpleNamespace

    from mmengine.logging import MMLogger

    from detr_plugin.registry import HOOKS
    runner = SimpleNamespace(train_dataloader=loader, model=model, epoch=0,
                             logger=MMLogger.get_current_instance())
    for hook_cfg in [*cfg.get('default_hooks', {}).values(), *cfg.get('custom_hooks', [])]:
        if hook_cfg and hook_cfg.get('type') == 'AugmentationWindowHook':
            hook = HOOKS.build(hook_cfg)
            hook.before_train(runner)
            hook.before_train_epoch(runner)


def import_original_data(package: str, root: str) -> None:
    """Registers the original's train loader modules (after its model code, which registers
    ``package`` and ``package.data`` as empty packages): ``CocoDetection``, its transforms and
    collate functions; its dataset package's ``__init__`` (VOC, CIFAR, evaluators) is not run.
    Its transforms that define only the methods torchvision's v2 ``Transform`` overrode before
    0.21 get the new names too (DEIM's ``ConvertPILImage`` and ``ConvertBoxes``, which
    torchvision >= 0.21 would not call)."""
    import types

    from torchvision.transforms.v2 import Transform
    dataset = types.ModuleType(f'{package}.data.dataset')
    dataset.__path__ = [os.path.join(root, package, 'data', 'dataset')]
    sys.modules[dataset.__name__] = dataset
    for name in ('dataset.coco_dataset', 'transforms', 'dataloader'):
        importlib.import_module(f'{package}.data.{name}')
    transforms = importlib.import_module(f'{package}.data.transforms._transforms')
    for cls in vars(transforms).values():
        if isinstance(cls, type) and issubclass(cls, Transform):
            for old, new in (('_transform', 'transform'), ('_get_params', 'make_params')):
                if old in vars(cls) and new not in vars(cls):
                    setattr(cls, new, vars(cls)[old])


def original_loader(family: OriginalFamily, name: str, args):
    """The original's train loader of its model ``name``'s YAML config reading the COCO-like
    dataset at epoch 0: ``(images (B, 3, H, W) in [0, 1], targets)`` batches, with targets'
    ``boxes`` normalized (cx, cy, w, h) and ``labels`` in 0..79."""
    from benchmark_rtdetr import FAMILIES
    spec, root = FAMILIES[family.version], args.original_root
    cfg = spec.load_config(family.version, root, os.path.join(
        root, 'configs', spec.config_dir, spec.models[name][1]), 640)
    import_original_data(family.package, root)
    loader_cfg = cfg.yaml_cfg['train_dataloader']
    loader_cfg['dataset'].update(img_folder=os.path.join(args.data_root, 'train2017'),
                                 ann_file=os.path.join(args.data_root, 'annotations',
                                                       'instances_train2017.json'))
    loader_cfg.update(total_batch_size=args.batch, num_workers=args.workers, drop_last=True,
                      persistent_workers=args.workers > 0)
    loader = cfg.train_dataloader
    loader.set_epoch(0)  # as its solver before the first epoch
    return loader


def to_device(batch: Tuple[torch.Tensor, List[dict]], device: str):
    images, targets = batch  # D-FINE's targets also hold the image path
    return images.to(device), [{k: v.to(device) if torch.is_tensor(v) else v
                                for k, v in t.items()} for t in targets]


def original_side(args) -> Tuple[Side, Dict[str, torch.Tensor]]:
    """The original's side and its weights converted into ours."""
    import random

    from benchmark_rtdetr import FAMILIES, original_model

    from detr_plugin import converters
    # its data order and augmentation draws (torch's and, in the loader's process, Python's
    # random), as ours, by --seed
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    family, name = original_of(args.config)
    original = original_model(family.version, name, args.original_root, size=640)
    model, criterion = original.model, original.criterion
    # copies: the converted tensors share the parameters' storage, which its steps update
    weights = {k: v.clone() for k, v in getattr(
        converters, FAMILIES[family.version].converter)(model.state_dict()).items()}
    loader = original_loader(family, name, args)
    model, criterion = model.to(args.device).train(), criterion.to(args.device).train()
    optimizer = original.optimizer()
    dtype = getattr(torch, AMP_DTYPES[args.amp]) if args.amp != 'none' else None
    scaler = torch.amp.GradScaler(args.device, enabled=dtype == torch.float16)
    steps = iter(range(2**62))

    def step(batch) -> float:
        torch.backends.cudnn.benchmark = False  # its train script leaves cuDNN's default
        images, targets = to_device(batch, args.device)
        i = next(steps)  # at epoch 0 throughout, as its loader
        metas = dict(epoch=0, step=i, global_step=i, epoch_step=len(loader))
        with torch.autocast(args.device, dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = model(images, targets=targets)
        boxes = outputs['pred_boxes']
        if dtype is not None and family.checks_boxes and (torch.isnan(boxes).any()
                                                          or torch.isinf(boxes).any()):
            raise FloatingPointError('the original predicted non-finite boxes')
        with torch.autocast(args.device, enabled=False):
            loss = sum(criterion(outputs, targets, **metas).values())
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), original.clip_max_norm)
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())
    resident = to_device(next(iter(loader)), args.device)
    step(resident)  # creates the optimizer state
    side = Side('original', forever(loader), step, resident, state_bytes(model, optimizer))
    return side, weights


def synchronize(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def run_turn(side: Side, iters: int, args, record: Record) -> None:
    """``iters`` iterations of next batch + step, timed in windows of ``--window``."""
    cuda = args.device.startswith('cuda')
    if cuda:
        synchronize(args.device)
        start_bytes = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    for first in range(0, iters, args.window):
        num = min(args.window, iters - first)
        synchronize(args.device)
        start = time.perf_counter()
        for _ in range(num):
            t = time.perf_counter()
            data = next(side.stream)
            record.waits.append((time.perf_counter() - t) * 1e3)
            record.losses.append(side.step(data))
        synchronize(args.device)
        record.rates.append(args.batch * num / (time.perf_counter() - start))
    if cuda:
        record.peak_rise.append(torch.cuda.max_memory_allocated() - start_bytes)


def run_pipeline(sides: List[Side], args) -> Dict[str, Record]:
    """(a): ``--warmup`` iterations per side, then ``--iters`` in ``--rounds`` turns."""
    records = {side.name: Record([], [], [], []) for side in sides}
    for side in sides:
        run_turn(side, args.warmup, args, Record([], [], [], []))
    for turn in range(args.rounds):
        iters = args.iters // args.rounds + (turn < args.iters % args.rounds)
        for side in sides:
            if iters:
                run_turn(side, iters, args, records[side.name])
    return records


def peak_mib(side: Side, record: Record, device: str) -> float:
    if device.startswith('cuda'):
        return (side.state_bytes + max(record.peak_rise)) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux: KiB


def table(args, sides: List[Side], records: Dict[str, Record], step_ms: Dict[str, float]) -> str:
    device = torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'
    memory = 'peak MiB' if args.device.startswith('cuda') else 'peak RSS MiB (process)'
    steps = args.warmup + args.iters + 1
    lines = [
        f'{os.path.basename(args.config)}, batch {args.batch}, AMP {args.amp}, {device}, '
        f'torch {torch.__version__}, {args.workers} workers per side, {args.iters} iterations '
        f'in {args.rounds} turns after {args.warmup} warm-up',
        f'| implementation | pipeline images/s | data wait ms/iter | epoch min (118,287 images) '
        f'| model step images/s | model step ms | {memory} | loss after {steps} steps |',
        '|---|---|---|---|---|---|---|---|']
    for side in sides:
        r = records[side.name]
        rate = statistics.median(r.rates)
        last = r.losses[-min(args.window, args.iters):]
        lines.append(
            f'| {side.name} | {rate:.1f} | {statistics.median(r.waits):.1f} | '
            f'{COCO_TRAIN_IMAGES / rate / 60:.1f} | {args.batch / step_ms[side.name] * 1e3:.1f} | '
            f'{step_ms[side.name]:.1f} | {peak_mib(side, r, args.device):.0f} | '
            f'{sum(last) / len(last):.4f} |')
    return '\n'.join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    from benchmark_rtdetr import interleaved_ms

    from detr_plugin.utils import register_all_modules
    register_all_modules()
    cfg = benchmark_config(args)
    sides, weights = [], None
    if args.original_root is not None:
        original, weights = original_side(args)
        sides.append(original)
    sides.insert(0, our_side(cfg, args, weights))
    if args.variant:
        name = 'ours, ' + ' '.join(f'{k}={v}' for k, v in args.variant.items())
        sides.insert(1, our_side(benchmark_config(args, args.variant), args, weights, name))
    records = run_pipeline(sides, args)
    # (b): the model step alone, on the resident batch
    step_ms = interleaved_ms({s.name: (lambda s=s: s.step(s.resident)) for s in sides},
                             args.warmup, args.step_iters, args.device, args.rounds)
    print(table(args, sides, records, step_ms))
    if args.device.startswith('cuda') and graph_pool_bytes():
        print(f'CUDA graph memory pools (reserved; not in the peak column): '
              f'{graph_pool_bytes() / 2**20:.0f} MiB')


def graph_pool_bytes() -> int:
    """Bytes of the device memory segments held by CUDA graphs' private pools (the
    activations a replay writes, which ``max_memory_allocated`` does not see)."""
    return sum(seg['total_size'] for seg in torch.cuda.memory_snapshot()
               if tuple(seg.get('segment_pool_id', (0, 0))) != (0, 0))


if __name__ == '__main__':
    main()
