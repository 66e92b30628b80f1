"""Trains the ORIGINAL RT-DETR (rtdetr_pytorch, or rtdetrv2_pytorch with ``--version v2``) for a
few hundred steps on fixed batches and saves the trajectory: first half of the training-trajectory
parity check of docs/parity.md.

Run it in the original's environment (torch, torchvision, scipy, pyyaml), never in detr_plugin's::

    python tools/model_converters/rtdetr_trajectory_reference.py \
        --rtdetr-root /work/ref/rtdetr_pytorch --config rtdetr_r18vd_6x_coco.yml \
        --batches /work/ref/trajectory/batches.pth --out /work/ref/trajectory/r18vd_fp32.pth
    python tools/model_converters/rtdetr_trajectory_reference.py --version v2 \
        --rtdetr-root /work/ref/rtdetrv2_pytorch --config rtdetrv2_r18vd_120e_coco.yml \
        --batches /work/ref/trajectory/batches.pth --out /work/ref/trajectory/v2_r18vd_fp64.pth \
        --float64

The batches file (synthetic images and boxes, see :func:`make_batches`) is written on the first
run and read afterwards, so every run, of the original and of ours, sees the same data. The model,
criterion, optimizer (the YAML's AdamW parameter-group regexes), learning-rate warm-up (v2's
``LinearWarmup``; v1 has none) and ``ModelEMA`` are the original's, built from its YAML config
(``PResNet.pretrained=False``, v1's ``RTDETR.multi_scale=None``; v2 has no batch multi-scale in
the model); the weights are perturbed and the BatchNorm statistics calibrated as in
rtdetr_parity_reference.py (v2: its constant tables left as they are). Each step is the
original's ``train_one_epoch`` body without AMP: ``torch.manual_seed(step)`` (so that the
denoising noise can be drawn identically elsewhere), forward with targets, criterion, ``sum`` of
the terms, backward, ``clip_grad_norm_(0.1)``, ``optimizer.step()``, ``ema.update(model)``, the
warm-up's ``step()``.

The output holds ``state_dict`` (initial weights), ``param_groups`` (lr, weight decay, betas, eps
of every trainable parameter, by name, before the warm-up scales the learning rates),
``lr_factors`` (per step, the learning rate it trained at over the one of ``param_groups``),
``losses`` (per step: every term and the total as
floats), ``grad_norms`` (the norm before clipping), ``ema_decays`` (the decay of each update),
``ema_state_dict`` and ``final_state_dict``.

``--float64`` runs the model, the images and the target boxes (exact: their corners lie on whole
pixels) in double precision; the default dtype stays float32, so the denoising noise (drawn into
default-dtype tensors, by the original and by ours) is the float32 run's, and the float64 run
differs from the float32 one by rounding alone. The second half is
tools/analysis/trajectory_parity.py.
"""
import argparse
import importlib
import math
import os
import sys
import time
from typing import Dict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rtdetr_parity_reference as v1  # noqa: E402
import rtdetrv2_parity_reference as v2  # noqa: E402

# per original: importer, default YAML, its folder under configs/, the decoder's YAML section,
# persistent float buffers that are fixed tables (left unperturbed)
ORIGINALS = {
    'v1': dict(importer=v1.import_original, config='rtdetr_r18vd_6x_coco.yml', folder='rtdetr',
               decoder='RTDETRTransformer', constants=()),
    'v2': dict(importer=v2.import_original, config='rtdetrv2_r18vd_120e_coco.yml',
               folder='rtdetrv2', decoder='RTDETRTransformerv2', constants=v2.CONSTANT_BUFFERS),
}


def make_batches(num_images: int, size: int, steps: int, batch_size: int, seed: int) -> dict:
    """Synthetic detection data: ``num_images`` noise images (3, size, size) in [0, 1], each with
    0-4 boxes painted in a colour of their label (labels 0-9); every fourth image has no box.
    Box corners lie on whole pixels, so with a power-of-two ``size`` the cxcywh normalized boxes
    and their xyxy pixel form convert into each other exactly in any precision. ``schedule``
    (steps, batch_size) lists the images of each step; it never puts only empty images in one
    batch (the original skips denoising for such a batch, ours pads it, see docs/parity.md)."""
    generator = torch.Generator().manual_seed(seed)
    colours = torch.rand(10, 3, generator=generator)
    images, targets = [], []
    for i in range(num_images):
        image = 0.3 * torch.rand(3, size, size, generator=generator)
        count = 0 if i % 4 == 3 else int(torch.randint(1, 5, (1, ), generator=generator))
        wh = torch.randint(size // 10, size // 2, (count, 2), generator=generator)
        corner = (torch.rand(count, 2, generator=generator) * (size - wh)).long()
        labels = torch.randint(0, 10, (count, ), generator=generator)
        for (x0, y0), (w, h), label in zip(corner.tolist(), wh.tolist(), labels.tolist()):
            image[:, y0:y0 + h, x0:x0 + w] = colours[label][:, None, None] + 0.1 * torch.rand(
                3, h, w, generator=generator)
        images.append(image.clamp(0, 1))
        boxes = torch.cat([corner + wh / 2, wh.float()], 1) / size  # cxcywh normalized
        targets.append(dict(labels=labels, boxes=boxes))
    order = torch.arange(steps * batch_size) % num_images
    return dict(images=torch.stack(images), targets=targets,
                schedule=order.reshape(steps, batch_size), seed=seed)


def load_or_make_batches(path: str, args: argparse.Namespace) -> dict:
    if os.path.exists(path):
        return torch.load(path, weights_only=False)
    batches = make_batches(args.num_images, args.size, args.steps, args.batch_size, args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(batches, path)
    return batches


def param_groups(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, dict]:
    """Settings of every trainable parameter, by name."""
    group_of = {id(p): g for g in optimizer.param_groups for p in g['params']}
    return {name: dict(lr=group_of[id(p)]['lr'], weight_decay=group_of[id(p)]['weight_decay'],
                       betas=tuple(group_of[id(p)]['betas']), eps=group_of[id(p)]['eps'])
            for name, p in model.named_parameters() if p.requires_grad}


def update(step: int, model: torch.nn.Module, terms: Dict[str, torch.Tensor],
           optimizer: torch.optim.Optimizer, ema, max_norm: float, warmup,
           records: Dict[str, list]) -> Dict[str, float]:
    """The original engine's update after the criterion: ``sum`` of the terms, backward,
    gradient clipping, optimizer step, ``ModelEMA.update``, the warm-up's ``step()`` (if any).
    Appends every term and the total as floats to ``records['losses']``, the gradient norm
    before clipping to ``records['grad_norms']`` and this EMA update's decay to
    ``records['ema_decays']``; returns the losses. SystemExit on a non-finite loss."""
    loss = sum(terms.values())
    optimizer.zero_grad()
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    optimizer.step()
    ema.update(model)
    if warmup is not None:
        warmup.step()
    losses = dict({k: float(v.detach()) for k, v in terms.items()}, total=float(loss.detach()))
    if not math.isfinite(losses['total']):
        raise SystemExit(f'step {step}: loss {losses["total"]}')
    records['losses'].append(losses)
    records['grad_norms'].append(grad_norm)
    records['ema_decays'].append(ema.decay_fn(ema.updates))
    return losses


def save_trajectory(args: argparse.Namespace, version: str, dtype: torch.dtype,
                    model: torch.nn.Module, ema, max_norm: float, **records) -> None:
    """Writes ``args.out``: the run's settings, ``records`` (``state_dict``, ``param_groups``,
    ``lr_factors``, ``losses``, ``grad_norms``, ``ema_decays``; see the module docstring) and
    the final EMA and model weights."""
    torch.save(dict(config=args.config, batches=os.path.abspath(args.batches), seed=args.seed,
                    dtype=str(dtype), steps=args.steps, torch_version=torch.__version__,
                    version=version, clip_max_norm=max_norm, ema_decay=ema.decay,
                    ema_warmups=ema.warmups, ema_state_dict=ema.module.state_dict(),
                    final_state_dict=model.state_dict(), **records), args.out)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every trajectory reference shares: data, output, length, seed, dtype."""
    parser.add_argument('--batches', required=True, help='batches file (written if missing)')
    parser.add_argument('--out', required=True)
    parser.add_argument('--steps', type=int, default=200)
    parser.add_argument('--num-images', type=int, default=16)
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0, help='data and weight seed')
    parser.add_argument('--float64', action='store_true')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--version', choices=sorted(ORIGINALS), default='v1',
                        help='v1: rtdetr_pytorch, v2: rtdetrv2_pytorch')
    parser.add_argument('--rtdetr-root', required=True,
                        help='path of rtdetr_pytorch/ (v1) or rtdetrv2_pytorch/ (v2)')
    parser.add_argument('--config', help='file name under configs/rtdetr/ (v1) or '
                        'configs/rtdetrv2/ (v2); default: the R18-vd one')
    add_run_arguments(parser)
    args = parser.parse_args()

    original = ORIGINALS[args.version]
    args.config = args.config or original['config']
    YAMLConfig = original['importer'](args.rtdetr_root)
    importlib.import_module('src.optim')  # registers AdamW, ModelEMA (and v2's LinearWarmup)
    cfg = YAMLConfig(os.path.join(args.rtdetr_root, 'configs', original['folder'], args.config))
    cfg.yaml_cfg['PResNet']['pretrained'] = False
    if 'multi_scale' in cfg.yaml_cfg['RTDETR']:
        cfg.yaml_cfg['RTDETR']['multi_scale'] = None
    batches = load_or_make_batches(args.batches, args)
    size = list(batches['images'].shape[-2:])  # eval-mode tables (BatchNorm calibration)
    cfg.yaml_cfg['eval_spatial_size'] = size  # v2 shares the top-level value with its modules
    cfg.yaml_cfg['HybridEncoder']['eval_spatial_size'] = size
    cfg.yaml_cfg[original['decoder']]['eval_spatial_size'] = size
    torch.manual_seed(args.seed)  # the initial weights are the same in every run
    model, criterion = cfg.model, cfg.criterion
    images, targets, schedule = batches['images'], batches['targets'], batches['schedule']
    if len(schedule) < args.steps:
        raise SystemExit(f'{args.batches} holds {len(schedule)} steps, fewer than --steps')

    generator = torch.Generator().manual_seed(args.seed)
    v1.perturb(model, generator, stats=False, constants=original['constants'])
    v1.calibrate_batchnorm(model, images[schedule[0]])
    v1.perturb(model, generator, stats=True)
    dtype = torch.float64 if args.float64 else torch.float32
    model.to(dtype)
    state_dict = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = cfg.optimizer  # the YAML's regex parameter groups, from the model above
    groups = param_groups(model, optimizer)
    base_lr = optimizer.param_groups[0]['lr']
    # v2's LinearWarmup sets the first step's learning rate; v1 has no warm-up
    warmup = getattr(cfg, 'lr_warmup_scheduler', None)
    ema = cfg.ema
    max_norm = cfg.clip_max_norm

    records: Dict[str, list] = dict(losses=[], grad_norms=[], ema_decays=[], lr_factors=[])
    model.train()
    criterion.train()
    start = time.time()
    for step in range(args.steps):
        samples = images[schedule[step]].to(dtype)
        batch_targets = [dict(labels=targets[int(i)]['labels'],
                              boxes=targets[int(i)]['boxes'].to(dtype)) for i in schedule[step]]
        records['lr_factors'].append(optimizer.param_groups[0]['lr'] / base_lr)
        torch.manual_seed(step)
        outputs = model(samples, batch_targets)
        loss_dict = criterion(outputs, batch_targets)
        total = update(step, model, loss_dict, optimizer, ema, max_norm, warmup, records)['total']
        if step % 20 == 0 or step == args.steps - 1:
            print(f'step {step:4d} loss {total:.6f} grad norm {records["grad_norms"][-1]:.4f} '
                  f'({time.time() - start:.0f} s)', flush=True)

    save_trajectory(args, args.version, dtype, model, ema, max_norm, state_dict=state_dict,
                    param_groups=groups, **records)
    final = f', final loss {records["losses"][-1]["total"]:.6f}' if records['losses'] else ''
    print(f'{args.config}: {args.steps} steps ({dtype}){final} -> {args.out}')


if __name__ == '__main__':
    main()
