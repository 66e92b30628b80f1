"""Trains the ORIGINAL D-FINE (Peterande/D-FINE) for a few hundred steps on fixed batches and
saves the trajectory: the D-FINE half of the training-trajectory parity check of docs/parity.md,
the counterpart of rtdetr_trajectory_reference.py (same batches file, same output format).

Run it in the original's environment (torch, torchvision, scipy, pyyaml), never in detr_plugin's::

    python tools/model_converters/dfine_trajectory_reference.py --root /work/ref/D-FINE \\
        --batches /work/ref/trajectory/batches.pth --out /work/ref/trajectory/dfine_s_fp64.pth \\
        --float64

The model, criterion (``DFINECriterion``), optimizer (the YAML's AdamW regex groups), warm-up
(``LinearWarmup``, 500 steps) and ``ModelEMA`` (0.9999, 1000 warm-up updates) are built by the
original's ``YAMLConfig`` from ``dfine_hgnetv2_s_coco.yml`` (``HGNetv2.pretrained=False``,
``eval_spatial_size`` the batches' image size); the weights are perturbed and the BatchNorm
statistics calibrated as in dfine_parity_reference.py ``--full``. A step is the original's
``train_one_epoch`` body without AMP: ``torch.manual_seed(step)`` (the denoising noise),
forward with targets, criterion (with the epoch / step metadata the engine passes), ``sum``,
backward, ``clip_grad_norm_`` with the YAML's ``clip_max_norm``, ``optimizer.step()``,
``ema.update(model)``, the warm-up's ``step()``.

``--float64`` casts the model (after the float32 initialisation), the images and the boxes to
double, and sets the attention's ``num_points_scale`` to 1 / P_l in double (the original keeps it
rounded to float32; ours computes it). The original's criterion cannot run in double as it is:
``translate_gt`` builds the FGL bin weights in a float32 tensor (``indices.float()``) and
assigning double values into it raises; with ``--float64`` the criterion module's
``bbox2distance`` is replaced by :func:`float64_bbox2distance`, the same formula (the paper's
edge distances and the two-bin interpolation) kept in the input's dtype; and the FGL loss rounds
its IoU weights to float32 (``weight.float()``, 1e-8 on the FGL terms), so the criterion's
``unimodal_distribution_focal_loss`` is replaced by :func:`float64_fgl`, the same sum without the
rounding. The float32 run uses the original as it is. The second half is
tools/analysis/trajectory_parity.py (it reads the reference's ``version``, 'dfine').
"""
import argparse
import importlib
import os
import sys
import time
from typing import Dict

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dfine_parity_reference import (CONSTANT_BUFFERS, import_full_model,  # noqa: E402
                                    import_original)
from rtdetr_parity_reference import calibrate_batchnorm, perturb  # noqa: E402
from rtdetr_trajectory_reference import (add_run_arguments, load_or_make_batches,  # noqa: E402
                                         param_groups, save_trajectory, update)


def float64_bbox2distance(points: torch.Tensor, boxes: torch.Tensor, reg_max: int,
                          reg_scale: torch.Tensor, up: torch.Tensor, eps: float = 0.1):
    """FGL targets in the dtype of ``points``: (N, 4) cxcywh reference points and (N, 4) xyxy
    boxes -> the four edge distances in bin units (4N,) clamped to [0, reg_max - eps], and the
    interpolation weights of the bins right and left of each (4N,).

    An edge's distance from the reference centre, in units of the reference's size over
    ``reg_scale`` and less half of ``reg_scale``, is placed on the weighting function W(n):
    left bin i = #{n: W(n) <= d} - 1, weight_right = (d - W(i)) / (W(i + 1) - W(i)); below W(0)
    bin 0 with weight_left 1, at or beyond bin ``reg_max`` bin reg_max - 0.1 with weight_right 1.
    """
    from src.zoo.dfine.dfine_utils import weighting_function
    scale = abs(reg_scale)
    cx, cy, w, h = points.unbind(-1)
    unit_w, unit_h = w / scale + 1e-16, h / scale + 1e-16
    d = torch.stack([(cx - boxes[:, 0]) / unit_w, (cy - boxes[:, 1]) / unit_h,
                     (boxes[:, 2] - cx) / unit_w, (boxes[:, 3] - cy) / unit_h], -1)
    d = (d - 0.5 * scale).reshape(-1)
    values = weighting_function(reg_max, up, reg_scale).to(d.dtype)
    bins = (values[None] <= d[:, None]).sum(1) - 1
    inside = (bins >= 0) & (bins < reg_max)
    left = bins.clamp(0, reg_max - 1)
    to_left = (d - values[left]).abs()
    to_right = (values[left + 1] - d).abs()
    weight_right = torch.where(inside, to_left / (to_left + to_right), (bins >= reg_max).to(d))
    weight_left = torch.where(inside, 1 - weight_right, (bins < 0).to(d))
    position = torch.where(bins < 0, torch.zeros_like(d),
                           torch.where(bins >= reg_max, torch.full_like(d, reg_max - 0.1),
                                       bins.to(d)))
    return (position.clamp(min=0, max=reg_max - eps).detach(), weight_right.detach(),
            weight_left.detach())


def float64_fgl(logits: torch.Tensor, bins: torch.Tensor, weight_right: torch.Tensor,
                weight_left: torch.Tensor, weight: torch.Tensor, avg_factor: float
                ) -> torch.Tensor:
    """FGL of (M, reg_max + 1) edge logits against (M,) fractional bin targets: cross-entropy
    with the left bin floor(t) times ``weight_left`` plus with floor(t) + 1 times
    ``weight_right``, times the (M,) IoU ``weight``, summed over ``avg_factor``; in the
    logits' dtype."""
    left = bins.long()
    loss = (F.cross_entropy(logits, left, reduction='none') * weight_left.reshape(-1)
            + F.cross_entropy(logits, left + 1, reduction='none') * weight_right.reshape(-1))
    return (loss * weight).sum() / avg_factor


def exact_point_scales(model: torch.nn.Module) -> None:
    """Every decoder layer's ``num_points_scale`` set to 1 / P_l in the model's dtype."""
    with torch.no_grad():
        for layer in model.decoder.decoder.layers:
            attention = layer.cross_attn
            counts = torch.tensor(attention.num_points_list, dtype=torch.float64)
            attention.num_points_scale.copy_((1 / counts).repeat_interleave(
                torch.tensor(attention.num_points_list)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', required=True, help='path of Peterande/D-FINE')
    parser.add_argument('--config', default='dfine_hgnetv2_s_coco.yml',
                        help='file name under configs/dfine/')
    add_run_arguments(parser)
    args = parser.parse_args()

    YAMLConfig = import_original(args.root, deim=False)[-1]
    import_full_model(args.root, deim=False)  # registers DFINE, HGNetv2, HybridEncoder
    importlib.import_module('src.optim')  # registers AdamW, ModelEMA, LinearWarmup
    cfg = YAMLConfig(os.path.join(args.root, 'configs', 'dfine', args.config))
    cfg.yaml_cfg['HGNetv2']['pretrained'] = False
    batches = load_or_make_batches(args.batches, args)
    cfg.yaml_cfg['eval_spatial_size'] = list(batches['images'].shape[-2:])
    images, targets, schedule = batches['images'], batches['targets'], batches['schedule']
    if len(schedule) < args.steps:
        raise SystemExit(f'{args.batches} holds {len(schedule)} steps, fewer than --steps')
    torch.manual_seed(args.seed)  # the initial weights are the same in every run
    model, criterion = cfg.model, cfg.criterion
    generator = torch.Generator().manual_seed(args.seed)
    perturb(model, generator, stats=False, constants=CONSTANT_BUFFERS)
    calibrate_batchnorm(model, images[schedule[0]])
    perturb(model, generator, stats=True)
    dtype = torch.float64 if args.float64 else torch.float32
    model.to(dtype)
    if args.float64:
        exact_point_scales(model)
        importlib.import_module('src.zoo.dfine.dfine_criterion').bbox2distance = \
            float64_bbox2distance
        criterion.unimodal_distribution_focal_loss = float64_fgl
    state_dict = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = cfg.optimizer
    groups = param_groups(model, optimizer)  # before the warm-up scales the learning rates
    base_lr = optimizer.param_groups[0]['lr']
    warmup, ema, max_norm = cfg.lr_warmup_scheduler, cfg.ema, cfg.clip_max_norm

    records: Dict[str, list] = dict(losses=[], grad_norms=[], ema_decays=[], lr_factors=[])
    model.train()
    criterion.train()
    start = time.time()
    for step, index in enumerate(schedule[:args.steps]):
        records['lr_factors'].append(optimizer.param_groups[0]['lr'] / base_lr)
        batch_targets = [dict(labels=targets[int(i)]['labels'],
                              boxes=targets[int(i)]['boxes'].to(dtype)) for i in index]
        torch.manual_seed(step)
        outputs = model(images[index].to(dtype), targets=batch_targets)
        terms = criterion(outputs, batch_targets, epoch=0, step=step, global_step=step,
                          epoch_step=len(schedule))
        total = update(step, model, terms, optimizer, ema, max_norm, warmup, records)['total']
        if step % 20 == 0 or step == args.steps - 1:
            print(f'step {step:4d} loss {total:.6f} ({time.time() - start:.0f} s)', flush=True)

    save_trajectory(args, 'dfine', dtype, model, ema, max_norm, state_dict=state_dict,
                    param_groups=groups, **records)
    print(f'{args.config}: {args.steps} steps ({dtype}) -> {args.out}')


if __name__ == '__main__':
    main()
