"""RT-DETR, RT-DETRv2, D-FINE and DEIM-D-FINE latency and training step: ours next to the
original, in one run.

Both models hold the same weights (the original's random initialisation with seeded noise and
calibrated BatchNorm statistics, converted to ours by the family's converter in
:mod:`detr_plugin.converters`), so the run also checks on the GPU that the two give the same
detections.

Inference (``--mode infer``): 640x640 images in (``--size``), top-300 (boxes, scores, labels)
out.
- original: its deploy form (``model.deploy()`` + ``postprocessor.deploy()``, as its
  tools/export_onnx.py builds it), eager, fp32 or bf16 autocast; also captured in a CUDA graph.
- ours: :class:`detr_plugin.deploy.End2EndDetector` on the fused model
  (:func:`detr_plugin.deploy.fuse_for_inference`), channels-last on the GPU, eager and in a CUDA
  graph; in bf16 / fp16 with the weights stored in that dtype
  (:func:`detr_plugin.deploy.store_weights_for_autocast`).
Training (``--mode train``): one step (forward with denoising, loss with matching, backward,
gradient clipping, AdamW) on random boxes, in images/s, and its peak memory: ours
``model.train_step`` with the config's optimizer wrapper; the original's model + criterion +
AdamW with its YAML's parameter groups and ``clip_max_norm``, stepped as its
``det_engine.train_one_epoch`` does (with AMP: the forward under autocast, the criterion outside
it, a gradient scaler).

The original's code is not part of this project: pass the path of a checkout of
lyuwenyu/RT-DETR's ``rtdetr_pytorch`` (``--version v1``) or ``rtdetrv2_pytorch`` (``v2``), of
Peterande/D-FINE (``dfine``) or of ShihuaHuang95/DEIM (``deim``); their dependencies:
torchvision, pyyaml, scipy (v2, D-FINE, DEIM: tensorboard too)::

    python tools/analysis/benchmark_rtdetr.py --root /path/to/rtdetr_pytorch \\
        --models r18 r50 --batch 1 8 --dtype fp32 bf16
    python tools/analysis/benchmark_rtdetr.py --version v2 \\
        --root /path/to/rtdetrv2_pytorch --models r18 r50 --batch 1 8 --dtype fp32 bf16
    python tools/analysis/benchmark_rtdetr.py --version dfine --root /path/to/D-FINE \\
        --models s l --mode train --batch 8 --dtype fp32 bf16
"""
import argparse
import contextlib
import copy
import functools
import importlib
import os
import statistics
import sys
from typing import Callable, Dict, NamedTuple, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, '..', 'model_converters'))
from benchmark_model import DTYPES, call_ms, cuda_graph  # noqa: E402


def rtdetr_config(version: str, root: str, path: str, size: int):
    """The YAMLConfig of an rtdetr_pytorch (v1) / rtdetrv2_pytorch (v2) config for size x size
    images: no pretrained download; v1 without its in-model multi-scale (v2 draws sizes in its
    data loader)."""
    import rtdetr_parity_reference as v1
    import rtdetrv2_parity_reference as v2
    cfg = (v1 if version == 'v1' else v2).import_original(root)(path)
    cfg.yaml_cfg['PResNet']['pretrained'] = False
    if version == 'v1':
        cfg.yaml_cfg['RTDETR']['multi_scale'] = None
        for section in ('HybridEncoder', 'RTDETRTransformer'):
            cfg.yaml_cfg[section]['eval_spatial_size'] = [size, size]
    else:
        cfg.yaml_cfg['eval_spatial_size'] = [size, size]
    return cfg


@functools.lru_cache(maxsize=None)
def import_dfine(root: str, deim: bool):
    """The original D-FINE / DEIM classes registered in its workspace (detector, HGNetv2,
    encoder, decoder, criterion, matcher, postprocessor); its YAMLConfig and load_config."""
    import dfine_parity_reference as ref
    YAMLConfig = ref.import_original(root, deim)[-1]
    ref.import_full_model(root, deim)
    top = 'engine' if deim else 'src'
    importlib.import_module(f'{top}.{"deim" if deim else "zoo.dfine"}.postprocessor')
    return YAMLConfig, importlib.import_module(f'{top}.core.yaml_utils').load_config


def dfine_config(version: str, root: str, path: str, size: int):
    """The YAMLConfig of a D-FINE (``dfine``) or DEIM-D-FINE (``deim``) config for size x size
    images, no pretrained download (the multi-scale sizes are drawn by its data loader, not the
    model)."""
    YAMLConfig, load_config = import_dfine(root, version == 'deim')
    cfg = YAMLConfig(path)
    # the original's load_config merges every file it reads into one dict, its default argument:
    # read this config alone (after D-FINE-S, D-FINE-L would inherit S's use_lab)
    cfg.yaml_cfg = load_config(path, {})
    cfg.yaml_cfg['HGNetv2']['pretrained'] = False
    cfg.yaml_cfg['eval_spatial_size'] = [size, size]
    return cfg


class Family(NamedTuple):
    title: str
    config_dir: str  # the original's YAMLs: <root>/configs/<config_dir>/
    load_config: Callable  # (version, root, YAML path, image size) -> the original's YAMLConfig
    converter: str  # the name in detr_plugin.converters
    models: Dict[str, Tuple[str, str]]  # name: (our config, the original's YAML)
    default_models: Tuple[str, ...]


FAMILIES = {
    'v1': Family('RT-DETR', 'rtdetr', rtdetr_config, 'convert_rtdetr', {
        'r18': ('configs/rtdetr/rtdetr_r18vd_8xb2-72e_coco.py', 'rtdetr_r18vd_6x_coco.yml'),
        'r34': ('configs/rtdetr/rtdetr_r34vd_8xb2-72e_coco.py', 'rtdetr_r34vd_6x_coco.yml'),
        'r50': ('configs/rtdetr/rtdetr_r50vd_8xb2-72e_coco.py', 'rtdetr_r50vd_6x_coco.yml'),
        'r101': ('configs/rtdetr/rtdetr_r101vd_8xb2-72e_coco.py', 'rtdetr_r101vd_6x_coco.yml'),
    }, ('r18', 'r50')),
    'v2': Family('RT-DETRv2', 'rtdetrv2', rtdetr_config, 'convert_rtdetr', {
        'r18': ('configs/rtdetrv2/rtdetrv2_r18vd_8xb2-120e_coco.py',
                'rtdetrv2_r18vd_120e_coco.yml'),
        'r34': ('configs/rtdetrv2/rtdetrv2_r34vd_8xb2-120e_coco.py',
                'rtdetrv2_r34vd_120e_coco.yml'),
        'r50m': ('configs/rtdetrv2/rtdetrv2_r50vd-m_8xb2-84e_coco.py',
                 'rtdetrv2_r50vd_m_7x_coco.yml'),
        'r50': ('configs/rtdetrv2/rtdetrv2_r50vd_8xb2-72e_coco.py', 'rtdetrv2_r50vd_6x_coco.yml'),
        'r101': ('configs/rtdetrv2/rtdetrv2_r101vd_8xb2-72e_coco.py',
                 'rtdetrv2_r101vd_6x_coco.yml'),
    }, ('r18', 'r50')),
    'dfine': Family('D-FINE', 'dfine', dfine_config, 'convert_dfine', {
        'n': ('configs/dfine/dfine_hgnetv2-n_8xb16-160e_coco.py', 'dfine_hgnetv2_n_coco.yml'),
        's': ('configs/dfine/dfine_hgnetv2-s_8xb4-132e_coco.py', 'dfine_hgnetv2_s_coco.yml'),
        'm': ('configs/dfine/dfine_hgnetv2-m_8xb4-132e_coco.py', 'dfine_hgnetv2_m_coco.yml'),
        'l': ('configs/dfine/dfine_hgnetv2-l_8xb4-80e_coco.py', 'dfine_hgnetv2_l_coco.yml'),
        'x': ('configs/dfine/dfine_hgnetv2-x_8xb4-80e_coco.py', 'dfine_hgnetv2_x_coco.yml'),
    }, ('s', 'l')),
    'deim': Family('DEIM-D-FINE', 'deim_dfine', dfine_config, 'convert_dfine', {
        'n': ('configs/deim/deim_dfine_hgnetv2-n_8xb16-160e_coco.py', 'deim_hgnetv2_n_coco.yml'),
        's': ('configs/deim/deim_dfine_hgnetv2-s_8xb4-132e_coco.py', 'deim_hgnetv2_s_coco.yml'),
        'm': ('configs/deim/deim_dfine_hgnetv2-m_8xb4-102e_coco.py', 'deim_hgnetv2_m_coco.yml'),
        'l': ('configs/deim/deim_dfine_hgnetv2-l_8xb4-58e_coco.py', 'deim_hgnetv2_l_coco.yml'),
        'x': ('configs/deim/deim_dfine_hgnetv2-x_8xb4-58e_coco.py', 'deim_hgnetv2_x_coco.yml'),
    }, ('s', 'l')),
}
ROOTS = {'v1': 'rtdetr_pytorch', 'v2': 'rtdetrv2_pytorch', 'dfine': 'Peterande/D-FINE',
         'deim': 'ShihuaHuang95/DEIM'}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--version', choices=list(FAMILIES), default='v1',
                   help=', '.join(f'{v}: {f.title}' for v, f in FAMILIES.items()))
    p.add_argument('--root', '--rtdetr-root', dest='root', required=True,
                   help='checkout of the original: ' +
                        ', '.join(f'{v}: {r}' for v, r in ROOTS.items()))
    p.add_argument('--models', nargs='+', help='; '.join(
        f'{v}: {" ".join(f.models)} (default {" ".join(f.default_models)})'
        for v, f in FAMILIES.items()))
    p.add_argument('--mode', choices=['infer', 'train'], default='infer')
    p.add_argument('--batch', type=int, nargs='+', default=[1, 8])
    p.add_argument('--size', type=int, default=640,
                   help='images of size x size (a multiple of 32; smaller only to check the '
                        'script on the CPU, with at least 300 encoder tokens: 128, N 320)')
    p.add_argument('--dtype', nargs='+', choices=['fp32', 'bf16', 'fp16'], default=['fp32', 'bf16'])
    p.add_argument('--boxes', type=int, default=12, help='train: ground-truth boxes per image')
    p.add_argument('--warmup', type=int, default=10)
    p.add_argument('--iters', type=int, default=50)
    p.add_argument('--rounds', type=int, default=5,
                   help='turns: each implementation runs iters / rounds calls per turn '
                        '(1: one after the other)')
    p.add_argument('--device', default='cuda', help="'cpu' only to check the script itself")
    args = p.parse_args()
    family = FAMILIES[args.version]
    args.models = args.models or list(family.default_models)
    if args.size % 32:
        p.error(f'--size {args.size}: not a multiple of 32 (the backbones\' largest stride)')
    unknown = [m for m in args.models if m not in family.models]
    if unknown:
        p.error(f'--models {" ".join(unknown)}: not a {args.version} model '
                f'(choose from {" ".join(family.models)})')
    return args


def interleaved_ms(fns: dict, warmup: int, iters: int, device: str, rounds: int = 5) -> dict:
    """Median milliseconds per call of each function, timed in turns (``rounds`` blocks of
    ``iters / rounds`` calls each) so that all see the same machine state."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name] += [call_ms(fn, device) for _ in range(max(iters // rounds, 1))]
    return {name: statistics.median(t) for name, t in times.items()}


class Original(NamedTuple):
    model: torch.nn.Module  # train mode, random weights
    criterion: torch.nn.Module
    postprocessor: torch.nn.Module
    optimizer: Callable[[], torch.optim.Optimizer]  # its YAML's AdamW on the model's parameters
    clip_max_norm: float


def original_model(version: str, name: str, root: str, size: int) -> Original:
    """The original's model, criterion, postprocessor and optimizer from its YAML config, random
    weights: seeded noise on every parameter except fixed tables, BatchNorm statistics calibrated
    on random images, then perturbed."""
    from rtdetr_parity_reference import calibrate_batchnorm, perturb
    from rtdetrv2_parity_reference import CONSTANT_BUFFERS  # D-FINE's fixed tables too
    family = FAMILIES[version]
    cfg = family.load_config(version, root, os.path.join(root, 'configs', family.config_dir,
                                                         family.models[name][1]), size)
    model, criterion, post = cfg.model, cfg.criterion, cfg.postprocessor
    generator = torch.Generator().manual_seed(0)
    perturb(model, generator, stats=False, constants=CONSTANT_BUFFERS)
    calibrate_batchnorm(model, torch.rand(2, 3, size, size, generator=generator))
    perturb(model, generator, stats=True)
    optim_cfg = cfg.yaml_cfg['optimizer']
    if optim_cfg['type'] != 'AdamW':
        raise ValueError(f'{family.models[name][1]}: optimizer {optim_cfg["type"]}, not AdamW')

    def optimizer():
        return torch.optim.AdamW(cfg.get_optim_params(optim_cfg, model), lr=optim_cfg['lr'],
                                 betas=optim_cfg['betas'],
                                 weight_decay=optim_cfg['weight_decay'])
    return Original(model.train(), criterion, post, optimizer, cfg.yaml_cfg['clip_max_norm'])


def build_pair(version: str, name: str, root: str, size: int):
    """(the original, our model, our config), same weights, on the CPU, train mode."""
    from mmengine.config import Config

    from detr_plugin import converters
    from detr_plugin.registry import MODELS as REGISTRY
    family = FAMILIES[version]
    theirs = original_model(version, name, root, size)
    mm_cfg = Config.fromfile(family.models[name][0])
    mm_cfg.model.backbone.init_cfg = None
    mm_cfg.model.bbox_head.num_classes = 80
    mm_cfg.model.data_preprocessor.pop('batch_augments', None)  # fixed size, as the original's
    ours = REGISTRY.build(mm_cfg.model)
    convert = getattr(converters, family.converter)
    ours.load_state_dict(convert(theirs.model.state_dict()), strict=True)
    return theirs, ours, mm_cfg


def autocast(dtype, device):
    return torch.autocast(device, dtype=DTYPES[dtype], enabled=DTYPES[dtype] is not None,
                          cache_enabled=False)


@contextlib.contextmanager
def full_fp32():
    """No TF32 in convolutions and matmuls, so that the two models' outputs can be compared."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def infer_rows(name: str, args) -> list:
    from detr_plugin.deploy import (End2EndDetector, fuse_for_inference,
                                    store_weights_for_autocast)
    original, ours, _ = build_pair(args.version, name, args.root, args.size)
    dev = args.device
    theirs = original.model.deploy().to(dev)
    post = original.postprocessor.deploy()
    ours = End2EndDetector(fuse_for_inference(ours.eval()), channels_last=dev == 'cuda').to(dev)
    rows = []
    for bs in args.batch:
        images = torch.rand(bs, 3, args.size, args.size,
                            generator=torch.Generator().manual_seed(bs)).to(dev)
        sizes = torch.tensor([[args.size, args.size]] * bs, device=dev)
        with torch.no_grad(), full_fp32():
            _, _, their_scores = post(theirs(images), sizes)
            _, our_scores, _ = ours(images)
        score_diff = (their_scores.sort(1).values - our_scores.sort(1).values).abs().max().item()
        for dtype in args.dtype:
            net = ours if DTYPES[dtype] is None else \
                store_weights_for_autocast(copy.deepcopy(ours), DTYPES[dtype])

            def run_theirs():
                with torch.no_grad(), autocast(dtype, args.device):
                    return post(theirs(images), sizes)

            def run_ours():
                with torch.no_grad(), autocast(dtype, args.device):
                    return net(images)
            row = dict(model=name, batch=bs, dtype=dtype, score_diff=score_diff)
            fns = dict(theirs_eager=run_theirs, ours_eager=run_ours)
            for impl, fn in (('theirs', run_theirs), ('ours', run_ours)):
                if dev == 'cpu':
                    row[f'{impl}_graph'] = 'n/a'
                    continue
                try:
                    fns[f'{impl}_graph'] = cuda_graph(fn)
                except Exception as e:  # report, do not hide the other rows
                    row[f'{impl}_graph'] = f'failed: {type(e).__name__}'
                    print(f'{impl} {name} batch {bs} {dtype}: CUDA graph capture failed: '
                          f'{str(e).splitlines()[0][:300]}')
                    torch.cuda.synchronize()
            row.update(interleaved_ms(fns, args.warmup, args.iters, dev, args.rounds))
            rows.append(row)
            print(row, flush=True)
    return rows


def random_targets(bs: int, num_boxes: int, seed: int, device: str):
    """(cx, cy, w, h) normalized boxes and labels per image."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(bs):
        wh = torch.rand(num_boxes, 2, generator=g) * 0.2 + 0.02
        cxcy = torch.rand(num_boxes, 2, generator=g) * (1 - wh) + wh / 2
        targets.append(dict(boxes=torch.cat([cxcy, wh], 1).to(device),
                            labels=torch.randint(0, 80, (num_boxes, ), generator=g).to(device)))
    return targets


def resident_bytes(modules, optimizer: torch.optim.Optimizer) -> int:
    """Bytes held between steps: parameters, buffers, gradients and optimizer state."""
    tensors = {}
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            tensors[t.data_ptr()] = t
            if t.grad is not None:
                tensors[t.grad.data_ptr()] = t.grad
    for state in optimizer.state.values():
        tensors.update((t.data_ptr(), t) for t in state.values() if torch.is_tensor(t))
    return sum(t.numel() * t.element_size() for t in tensors.values())


def peak_mib(step: Callable[[], object], modules, optimizer, device: str):
    """Peak memory of one training step as if alone on the device (MiB): the resident bytes of
    its models and optimizer plus the most the step allocated above what was allocated before
    it (the other implementation's tensors stay resident and are not counted)."""
    if device == 'cpu':
        return 'n/a'
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    resident = resident_bytes(modules, optimizer)
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (resident + torch.cuda.max_memory_allocated() - before) / 2**20


def original_step(original: Original, optimizer, images, targets, dtype: str, device: str):
    """One step of the original as its det_engine.train_one_epoch takes it: with AMP the forward
    under autocast, the criterion outside it and a gradient scaler; in fp32 plainly."""
    model, criterion, clip = original.model, original.criterion, original.clip_max_norm
    if DTYPES[dtype] is None:
        def step():
            loss = sum(criterion(model(images, targets), targets).values())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
        return step
    scaler = torch.amp.GradScaler(device)

    def amp_step():
        with torch.autocast(device, dtype=DTYPES[dtype]):
            out = model(images, targets)
        with torch.autocast(device, enabled=False):
            loss = sum(criterion(out, targets).values())
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    return amp_step


def train_rows(name: str, args) -> list:
    from mmdet.structures import DetDataSample
    from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
    from mmengine.optim import build_optim_wrapper
    from mmengine.structures import InstanceData
    original, ours, cfg = build_pair(args.version, name, args.root, args.size)
    size = args.size
    dev = args.device
    original.model.to(dev).train()
    original.criterion.to(dev).train()
    ours = ours.to(dev).train()
    rows = []
    for bs in args.batch:
        images = torch.rand(bs, 3, size, size, generator=torch.Generator().manual_seed(bs)).to(dev)
        targets = random_targets(bs, args.boxes, bs, dev)
        samples = []
        for t in targets:
            s = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                            scale_factor=(1., 1.), pad_shape=(size, size),
                                            batch_input_shape=(size, size)))
            s.gt_instances = InstanceData(bboxes=bbox_cxcywh_to_xyxy(t['boxes']) * size,
                                          labels=t['labels'])
            samples.append(s)
        data = dict(inputs=list((images * 255).round()), data_samples=samples)
        for dtype in args.dtype:
            optim_cfg = cfg.optim_wrapper.copy()
            if DTYPES[dtype] is not None:
                optim_cfg.update(type='AmpOptimWrapper', dtype=DTYPES[dtype])
            wrapper = build_optim_wrapper(ours, optim_cfg)
            their_optim = original.optimizer()
            steps = dict(theirs_train=original_step(original, their_optim, images, targets,
                                                    dtype, dev),
                         ours_train=lambda: ours.train_step(data, wrapper))
            row = dict(model=name, batch=bs, dtype=dtype,
                       **interleaved_ms(steps, args.warmup, args.iters, dev, args.rounds))
            row.update(theirs_mib=peak_mib(steps['theirs_train'],
                                           (original.model, original.criterion), their_optim, dev),
                       ours_mib=peak_mib(steps['ours_train'], (ours, ), wrapper.optimizer, dev))
            rows.append(row)
            print(row, flush=True)
    return rows


def fmt(v, digits=2):
    return f'{v:.{digits}f}' if isinstance(v, float) else str(v)


def main():
    args = parse_args()
    from detr_plugin.utils import register_all_modules
    register_all_modules()
    rows = []
    for name in args.models:
        rows += (infer_rows if args.mode == 'infer' else train_rows)(name, args)
    device = torch.cuda.get_device_name() if args.device != 'cpu' else 'cpu'
    print(f'\n{FAMILIES[args.version].title} {args.mode}, {args.size}x{args.size}, {device}, '
          f'torch {torch.__version__}, median of {args.iters} after {args.warmup} warm-up, ms')
    if args.mode == 'infer':
        print('| model | batch | dtype | original eager | original graph | ours eager | ours graph '
              '| original eager / ours eager | original eager / ours graph '
              '| sorted-score max diff (fp32, no TF32) |')
        print('|---|---|---|---|---|---|---|---|---|---|')
        for r in rows:
            ratio = (r['theirs_eager'] / r['ours_graph']
                     if isinstance(r['ours_graph'], float) else float('nan'))
            print(f"| {r['model']} | {r['batch']} | {r['dtype']} | {fmt(r['theirs_eager'])} | "
                  f"{fmt(r['theirs_graph'])} | {fmt(r['ours_eager'])} | {fmt(r['ours_graph'])} | "
                  f"{r['theirs_eager'] / r['ours_eager']:.2f}x | {ratio:.1f}x | "
                  f"{r['score_diff']:.1e} |")
    else:
        print('| model | batch | precision | original step | ours step | original images/s '
              '| ours images/s | speed-up | original peak MiB | ours peak MiB |')
        print('|---|---|---|---|---|---|---|---|---|---|')
        for r in rows:
            prec = 'fp32' if r['dtype'] == 'fp32' else f"AMP {r['dtype']}"
            print(f"| {r['model']} | {r['batch']} | {prec} | {r['theirs_train']:.1f} | "
                  f"{r['ours_train']:.1f} | {r['batch'] * 1e3 / r['theirs_train']:.1f} | "
                  f"{r['batch'] * 1e3 / r['ours_train']:.1f} | "
                  f"{r['theirs_train'] / r['ours_train']:.2f}x | {fmt(r['theirs_mib'], 0)} | "
                  f"{fmt(r['ours_mib'], 0)} |")


if __name__ == '__main__':
    main()
