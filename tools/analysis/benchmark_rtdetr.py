"""RT-DETR / RT-DETRv2 latency and training step: ours next to the original, in one run.

Both models hold the same weights (the original's random initialisation with seeded noise and
calibrated BatchNorm statistics, converted to ours by
:func:`detr_plugin.converters.convert_rtdetr`), so the run also checks on the GPU that the two
give the same detections.

Inference (``--mode infer``): 640x640 images in, top-300 (boxes, scores, labels) out.
- original: its deploy form (``model.deploy()`` + ``postprocessor.deploy()``, as its
  tools/export_onnx.py builds it), eager, fp32 or bf16 autocast; also captured in a CUDA graph.
- ours: :class:`detr_plugin.deploy.End2EndDetector` on the fused model
  (:func:`detr_plugin.deploy.fuse_for_inference`), channels-last on the GPU, eager and in a CUDA
  graph; in bf16 / fp16 with the weights stored in that dtype
  (:func:`detr_plugin.deploy.store_weights_for_autocast`).
Training (``--mode train``): one step (forward with denoising, loss with matching, backward,
gradient clipping 0.1, AdamW) on random boxes: ours ``model.train_step`` with the config's
optimizer wrapper, the original's model + criterion + the same optimizer settings.

The original's code is not part of this project: pass the path of a checkout of
lyuwenyu/RT-DETR's ``rtdetr_pytorch`` (``--version v1``) or ``rtdetrv2_pytorch``
(``--version v2``); their dependencies: torchvision, pyyaml, scipy (v2: tensorboard too)::

    python tools/analysis/benchmark_rtdetr.py --rtdetr-root /path/to/rtdetr_pytorch \\
        --models r18 r50 --batch 1 8 --dtype fp32 bf16
    python tools/analysis/benchmark_rtdetr.py --version v2 \\
        --rtdetr-root /path/to/rtdetrv2_pytorch --models r18 r50 --batch 1 8 --dtype fp32 bf16
"""
import argparse
import contextlib
import copy
import os
import statistics
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, '..', 'model_converters'))
from benchmark_model import DTYPES, call_ms, cuda_graph  # noqa: E402

MODELS = {  # version: {name: (our config, the original's config under configs/<version dir>/)}
    'v1': {
        'r18': ('configs/rtdetr/rtdetr_r18vd_8xb2-72e_coco.py', 'rtdetr_r18vd_6x_coco.yml'),
        'r34': ('configs/rtdetr/rtdetr_r34vd_8xb2-72e_coco.py', 'rtdetr_r34vd_6x_coco.yml'),
        'r50': ('configs/rtdetr/rtdetr_r50vd_8xb2-72e_coco.py', 'rtdetr_r50vd_6x_coco.yml'),
        'r101': ('configs/rtdetr/rtdetr_r101vd_8xb2-72e_coco.py', 'rtdetr_r101vd_6x_coco.yml'),
    },
    'v2': {
        'r18': ('configs/rtdetrv2/rtdetrv2_r18vd_8xb2-120e_coco.py',
                'rtdetrv2_r18vd_120e_coco.yml'),
        'r34': ('configs/rtdetrv2/rtdetrv2_r34vd_8xb2-120e_coco.py',
                'rtdetrv2_r34vd_120e_coco.yml'),
        'r50m': ('configs/rtdetrv2/rtdetrv2_r50vd-m_8xb2-84e_coco.py',
                 'rtdetrv2_r50vd_m_7x_coco.yml'),
        'r50': ('configs/rtdetrv2/rtdetrv2_r50vd_8xb2-72e_coco.py', 'rtdetrv2_r50vd_6x_coco.yml'),
        'r101': ('configs/rtdetrv2/rtdetrv2_r101vd_8xb2-72e_coco.py',
                 'rtdetrv2_r101vd_6x_coco.yml'),
    },
}
ORIGINAL_CONFIG_DIR = {'v1': 'rtdetr', 'v2': 'rtdetrv2'}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--version', choices=list(MODELS), default='v1',
                   help='v1: RT-DETR (rtdetr_pytorch), v2: RT-DETRv2 (rtdetrv2_pytorch)')
    p.add_argument('--rtdetr-root', required=True,
                   help='checkout of rtdetr_pytorch (v1) or rtdetrv2_pytorch (v2)')
    p.add_argument('--models', nargs='+', default=['r18', 'r50'],
                   help=', '.join(f'{v}: {" ".join(m)}' for v, m in MODELS.items()))
    p.add_argument('--mode', choices=['infer', 'train'], default='infer')
    p.add_argument('--batch', type=int, nargs='+', default=[1, 8])
    p.add_argument('--dtype', nargs='+', choices=['fp32', 'bf16', 'fp16'], default=['fp32', 'bf16'])
    p.add_argument('--boxes', type=int, default=12, help='train: ground-truth boxes per image')
    p.add_argument('--warmup', type=int, default=10)
    p.add_argument('--iters', type=int, default=50)
    p.add_argument('--rounds', type=int, default=5,
                   help='turns: each implementation runs iters / rounds calls per turn '
                        '(1: one after the other)')
    p.add_argument('--device', default='cuda', help="'cpu' only to check the script itself")
    args = p.parse_args()
    unknown = [m for m in args.models if m not in MODELS[args.version]]
    if unknown:
        p.error(f'--models {" ".join(unknown)}: not a {args.version} model '
                f'(choose from {" ".join(MODELS[args.version])})')
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


def original_model(version: str, name: str, root: str):
    """The original's (model, criterion, postprocessor) from its YAML config, random weights:
    seeded noise on every parameter except fixed tables (RT-DETRv2's point scales and encoder
    anchors), BatchNorm statistics calibrated on random images, then perturbed."""
    import rtdetr_parity_reference as v1
    import rtdetrv2_parity_reference as v2
    YAMLConfig = (v1 if version == 'v1' else v2).import_original(root)
    cfg = YAMLConfig(os.path.join(root, 'configs', ORIGINAL_CONFIG_DIR[version],
                                  MODELS[version][name][1]))
    cfg.yaml_cfg['PResNet']['pretrained'] = False
    if version == 'v1':  # v2 draws its training sizes in the data loader, not the model
        cfg.yaml_cfg['RTDETR']['multi_scale'] = None
    model, criterion, post = cfg.model, cfg.criterion, cfg.postprocessor
    generator = torch.Generator().manual_seed(0)
    v1.perturb(model, generator, stats=False, constants=v2.CONSTANT_BUFFERS)
    v1.calibrate_batchnorm(model, torch.rand(2, 3, 640, 640, generator=generator))
    v1.perturb(model, generator, stats=True)
    return model.train(), criterion, post


def build_pair(version: str, name: str, rtdetr_root: str):
    """(original model, its criterion, its postprocessor, our model, our config), same weights,
    on the CPU, train mode."""
    from mmengine.config import Config

    from detr_plugin.converters import convert_rtdetr
    from detr_plugin.registry import MODELS as REGISTRY
    theirs, criterion, post = original_model(version, name, rtdetr_root)
    mm_cfg = Config.fromfile(MODELS[version][name][0])
    mm_cfg.model.backbone.init_cfg = None
    mm_cfg.model.bbox_head.num_classes = 80
    mm_cfg.model.data_preprocessor.pop('batch_augments', None)  # fixed 640x640, as the original's
    ours = REGISTRY.build(mm_cfg.model)
    ours.load_state_dict(convert_rtdetr(theirs.state_dict()), strict=True)
    return theirs, criterion, post, ours, mm_cfg


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
    theirs, _, post, ours, _ = build_pair(args.version, name, args.rtdetr_root)
    dev = args.device
    theirs = theirs.deploy().to(dev)
    post = post.deploy()
    ours = End2EndDetector(fuse_for_inference(ours.eval()), channels_last=dev == 'cuda').to(dev)
    rows = []
    for bs in args.batch:
        images = torch.rand(bs, 3, 640, 640, generator=torch.Generator().manual_seed(bs)).to(dev)
        sizes = torch.tensor([[640, 640]] * bs, device=dev)
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


def train_rows(name: str, args) -> list:
    from mmdet.structures import DetDataSample
    from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
    from mmengine.optim import build_optim_wrapper
    from mmengine.structures import InstanceData
    theirs, criterion, _, ours, cfg = build_pair(args.version, name, args.rtdetr_root)
    dev = args.device
    theirs, criterion, ours = theirs.to(dev).train(), criterion.to(dev).train(), ours.to(dev).train()
    rows = []
    for bs in args.batch:
        images = torch.rand(bs, 3, 640, 640, generator=torch.Generator().manual_seed(bs)).to(dev)
        targets = random_targets(bs, args.boxes, bs, dev)
        samples = []
        for t in targets:
            s = DetDataSample(metainfo=dict(img_shape=(640, 640), ori_shape=(640, 640),
                                            scale_factor=(1., 1.), pad_shape=(640, 640),
                                            batch_input_shape=(640, 640)))
            s.gt_instances = InstanceData(bboxes=bbox_cxcywh_to_xyxy(t['boxes']) * 640,
                                          labels=t['labels'])
            samples.append(s)
        data = dict(inputs=list((images * 255).round()), data_samples=samples)
        for dtype in args.dtype:
            optim_cfg = cfg.optim_wrapper.copy()
            if DTYPES[dtype] is not None:
                optim_cfg.update(type='AmpOptimWrapper', dtype=DTYPES[dtype])
            wrapper = build_optim_wrapper(ours, optim_cfg)
            their_optim = torch.optim.AdamW(theirs.parameters(), lr=1e-4, weight_decay=1e-4)

            def step_theirs():
                with autocast(dtype, args.device):
                    out = theirs(images, targets)
                    loss = sum(criterion(out, targets).values())
                their_optim.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.1)
                their_optim.step()

            row = dict(model=name, batch=bs, dtype=dtype, **interleaved_ms(
                dict(theirs_train=step_theirs, ours_train=lambda: ours.train_step(data, wrapper)),
                args.warmup, args.iters, dev, args.rounds))
            rows.append(row)
            print(row, flush=True)
    return rows


def fmt(v):
    return f'{v:.2f}' if isinstance(v, float) else str(v)


def main():
    args = parse_args()
    from detr_plugin.utils import register_all_modules
    register_all_modules()
    rows = []
    for name in args.models:
        rows += (infer_rows if args.mode == 'infer' else train_rows)(name, args)
    device = torch.cuda.get_device_name() if args.device != 'cpu' else 'cpu'
    print(f'\nRT-DETR {args.version} {args.mode}, 640x640, {device}, torch {torch.__version__}, '
          f'median of {args.iters} after {args.warmup} warm-up, ms')
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
        print('| model | batch | precision | original step | ours step | speed-up |')
        print('|---|---|---|---|---|---|')
        for r in rows:
            prec = 'fp32' if r['dtype'] == 'fp32' else f"AMP {r['dtype']}"
            print(f"| {r['model']} | {r['batch']} | {prec} | {r['theirs_train']:.1f} | "
                  f"{r['ours_train']:.1f} | {r['theirs_train'] / r['ours_train']:.2f}x |")


if __name__ == '__main__':
    main()
