"""Training-trajectory parity: detr_plugin's RT-DETR, RT-DETRv2 or D-FINE trained step by step
against the original's trajectory saved by tools/model_converters/rtdetr_trajectory_reference.py
or dfine_trajectory_reference.py (docs/parity.md).

    python tools/analysis/trajectory_parity.py /work/ref/trajectory/r18vd_fp64.pth \\
        configs/rtdetr/rtdetr_r18vd_8xb2-72e_coco.py [--tol-loss 1e-6] [--tol-ema 1e-6] \\
        [--noise-reference OTHER_RUN_OF_THE_ORIGINAL.pth] [--json out.json]
    python tools/analysis/trajectory_parity.py /work/ref/trajectory/v2_r18vd_fp64.pth \\
        configs/rtdetrv2/rtdetrv2_r18vd_8xb2-120e_coco.py
    python tools/analysis/trajectory_parity.py /work/ref/trajectory/dfine_s_fp64.pth \\
        configs/dfine/dfine_hgnetv2-s_8xb4-132e_coco.py

The reference's ``version`` picks the converter and the loss names (``FAMILIES``).

Ours starts from the original's initial weights (converted, loaded strictly) and sees the same
batches (the file the reference names), in the reference's dtype. Its optimizer is built by
mmengine's ``build_optim_wrapper`` from the config's ``optim_wrapper`` (AdamW, parameter groups,
gradient clipping), its learning-rate schedule by the config's ``param_scheduler`` (built as the
runner builds it; the iteration-based ones stepped after every step, as ``ParamSchedulerHook``
does: RT-DETRv2's warm-up), its weight average by the config's ``EMAHook`` (``before_run``, then
``after_train_iter`` after every step, as the runner calls them). A step is ``train_step`` without
the data preprocessor (the batch is already in [0, 1], as the original's; the preprocessor would
cast float64 inputs to float32): ``torch.manual_seed(step)`` as the reference did, so that the
denoising noise is the same, ``model.loss``, ``parse_losses`` (the sum of every term),
``optim_wrapper.update_params``.

Printed and written (``--json``): every trainable parameter whose learning rate or weight decay
differs from the original's regex groups, the EMA decay of every update next to the original's, the
largest difference of the per-step learning-rate factors (the warm-up), per step the total loss of
both and every term's largest difference, and the largest difference of the final EMA weights
(weights absolute, BatchNorm statistics relative). Exits 1 when an optimizer setting differs, a
step's total loss by more than --tol-loss, an EMA entry by more than --tol-ema or a learning-rate
factor by more than rounding (1e-12): within a warm-up a weight-decay difference moves the loss by
far less than at the full learning rate. The default tolerances are for float64 runs, where the
original differs from itself (another torch version) by 1e-12 per step over the first 50 steps
and up to 3e-8 by step 200; float32 trajectories are chaotic (a rounding difference flips a
Hungarian match within a few steps) and are compared with another run of the original,
--noise-reference, rather than judged (docs/parity.md, "Training trajectory").
"""
import argparse
import json
import math
import os
import sys
from types import SimpleNamespace
from typing import Dict, List, Tuple

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import MessageHub, MMLogger
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmengine.registry import PARAM_SCHEDULERS
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..',
                                'model_converters'))
from dfine_parity_check import loss_name as dfine_loss_name  # noqa: E402
from rtdetr_parity_check import data_samples, loss_name  # noqa: E402

from detr_plugin.converters import convert_dfine, convert_rtdetr  # noqa: E402
from detr_plugin.registry import HOOKS, MODELS  # noqa: E402
from detr_plugin.utils import register_all_modules  # noqa: E402

REPORT_STEPS = (1, 10, 50, 100, 200)
# per reference ``version`` (the original it ran): checkpoint converter, loss-name mapping
FAMILIES = {'v1': (convert_rtdetr, loss_name), 'v2': (convert_rtdetr, loss_name),
            'dfine': (convert_dfine, dfine_loss_name)}
# learning-rate factors: the same schedule rounds differently (mmengine's LinearLR multiplies the
# previous rate by a ratio, the original's LinearWarmup computes (k + 1) / n), nothing more
LR_TOLERANCE = 1e-12


def build_model(cfg: Config, state_dict: Dict[str, torch.Tensor], dtype: torch.dtype,
                convert=convert_rtdetr) -> nn.Module:
    """The config's model (80 classes, no pretrained backbone) with the original's weights."""
    cfg.model.backbone.init_cfg = None
    cfg.model.bbox_head.num_classes = 80
    model = MODELS.build(cfg.model)
    model.load_state_dict(convert(state_dict), strict=True)
    return model.to(dtype)


def our_name(original: str, convert=convert_rtdetr) -> str:
    """The name ``convert`` gives an original parameter."""
    return next(iter(convert({original: torch.zeros(1)})))


def group_settings(model: nn.Module, optim_wrapper: OptimWrapper) -> Dict[str, dict]:
    """lr, weight decay, betas and eps of every parameter the optimizer updates, by our name."""
    group_of = {id(p): g for g in optim_wrapper.optimizer.param_groups for p in g['params']}
    return {name: dict(lr=group_of[id(p)]['lr'], weight_decay=group_of[id(p)]['weight_decay'],
                       betas=tuple(group_of[id(p)]['betas']), eps=group_of[id(p)]['eps'])
            for name, p in model.named_parameters() if id(p) in group_of}


def group_differences(theirs: Dict[str, dict], ours: Dict[str, dict],
                      convert=convert_rtdetr) -> List[Tuple[str, ...]]:
    """(original name, our name, setting, original's value, ours) for every setting that differs,
    and for parameters only one side trains."""
    rows = []
    mapped = {our_name(name, convert): name for name in theirs}
    for ours_name in sorted(set(mapped) | set(ours)):
        original = mapped.get(ours_name, '-')
        if ours_name not in ours or original == '-':
            rows.append((original, ours_name, 'trained', str(original != '-'),
                         str(ours_name in ours)))
            continue
        for key, value in theirs[original].items():
            if not math.isclose(float(value if key != 'betas' else sum(value)),
                                float(ours[ours_name][key] if key != 'betas'
                                      else sum(ours[ours_name][key])), rel_tol=1e-12):
                rows.append((original, ours_name, key, str(value), str(ours[ours_name][key])))
    return rows


def build_ema_hook(cfg: Config, model: nn.Module):
    """The config's ``EMAHook``, set up as the runner does before training."""
    hooks = [h for h in cfg.get('custom_hooks', []) if h['type'] == 'EMAHook']
    if len(hooks) != 1:
        raise ValueError(f'{cfg.filename}: custom_hooks has {len(hooks)} EMAHook entries, not 1')
    hook = HOOKS.build({k: v for k, v in hooks[0].items() if k != 'priority'})
    hook.before_run(SimpleNamespace(model=model))
    return hook


def build_schedulers(cfg: Config, optim_wrapper: OptimWrapper) -> list:
    """The config's parameter schedulers, built as the runner builds them (construction sets the
    first iteration's learning rate); only the iteration-based ones are returned, the ones a
    step advances: every step here lies in the first epoch."""
    configs = cfg.get('param_scheduler') or []
    configs = [configs] if isinstance(configs, dict) else configs
    schedulers = [PARAM_SCHEDULERS.build(dict(c, optimizer=optim_wrapper)) for c in configs]
    return [s for s in schedulers if not s.by_epoch]


def ema_decay(hook, update: int) -> float:
    """The weight our average keeps at its ``update``-th update (1-based): 0 at the first (the
    average starts as a copy of the model), then 1 - momentum_t."""
    ema = hook.ema_model
    if update == 1:
        return 0.0
    momentum = (1 - ema.momentum) * math.exp(-float(update) / ema.gamma) + ema.momentum
    return 1 - momentum


def train(model: nn.Module, optim_wrapper: OptimWrapper, schedulers: list, hook, batches: dict,
          steps: int, dtype: torch.dtype
          ) -> Tuple[List[Dict[str, float]], List[float], List[float]]:
    """``steps`` training steps; every step's loss terms (and 'total'), gradient norm and
    learning rate over the unscheduled one (the first parameter group's)."""
    model.train()
    runner = SimpleNamespace(model=model, iter=0, epoch=0)
    hub = MessageHub.get_current_instance()
    group = optim_wrapper.optimizer.param_groups[0]
    base_lr = group.get('initial_lr', group['lr'])  # schedulers keep the unscheduled one there
    losses, grad_norms, lr_factors = [], [], []
    for step in range(steps):
        lr_factors.append(group['lr'] / base_lr)
        index = batches['schedule'][step]
        inputs = batches['images'][index].to(dtype)
        samples = data_samples(inputs, [batches['targets'][int(i)] for i in index])
        torch.manual_seed(step)
        with optim_wrapper.optim_context(model):
            terms = model.loss(inputs, samples)
        total, log_vars = model.parse_losses(terms)
        optim_wrapper.update_params(total)
        runner.iter = step
        hook.after_train_iter(runner, step)
        for scheduler in schedulers:
            scheduler.step()
        grad_norms.append(hub.get_scalar('train/grad_norm').current())
        losses.append(dict({k: float(v) for k, v in log_vars.items() if k != 'loss'},
                           total=float(total.detach())))
        if step % 20 == 0 or step == steps - 1:
            print(f'step {step:4d} loss {losses[-1]["total"]:.6f} grad norm {grad_norms[-1]:.4f}',
                  flush=True)
    return losses, grad_norms, lr_factors


def loss_differences(theirs: List[Dict[str, float]], ours: List[Dict[str, float]],
                     num_layers: int, loss_names=loss_name) -> List[dict]:
    """Per step: both totals, their difference and the largest difference of any term. An
    original term that is exactly 0 and that ours lacks is left out (D-FINE's DDF of the last
    denoising layer with itself)."""
    rows = []
    for original, mine in zip(theirs, ours):
        terms = {loss_names(k, num_layers): v for k, v in original.items() if k != 'total'}
        terms = {k: v for k, v in terms.items() if k in mine or v != 0}
        unpaired = set(terms) ^ (set(mine) - {'total'})
        if unpaired:
            raise AssertionError(f'loss terms of one side only: {sorted(unpaired)}')
        worst = max(terms, key=lambda k: abs(terms[k] - mine[k]))
        rows.append(dict(theirs=original['total'], ours=mine['total'],
                         diff=abs(original['total'] - mine['total']),
                         term_diff=abs(terms[worst] - mine[worst]), worst_term=worst))
    return rows


def state_difference(theirs: Dict[str, torch.Tensor], ours: Dict[str, torch.Tensor],
                     convert=convert_rtdetr) -> Dict[str, Tuple[float, str]]:
    """Largest absolute difference of the floating-point entries of two state dicts (ours named
    as the converted original's) and where it is: over the weights, and over the BatchNorm
    running statistics relative to their magnitude (``|a - b| / max(1, |b|)``; variances of a
    random network reach 1e3)."""
    worst = {'weights': (0.0, ''), 'statistics': (0.0, '')}
    for name, value in convert(theirs).items():
        if not value.dtype.is_floating_point:
            continue
        diff = (value.double() - ours[name].double()).abs()
        key = 'statistics' if name.endswith(('running_mean', 'running_var')) else 'weights'
        if key == 'statistics':
            diff = diff / value.double().abs().clamp(min=1)
        if diff.max().item() > worst[key][0]:
            worst[key] = (diff.max().item(), name)
    return worst


def digest(state_dict: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Sum of every floating-point entry, by name: identifies the initial weights."""
    return {k: float(v.double().sum()) for k, v in state_dict.items()
            if v.dtype.is_floating_point}


def run_ours(cfg: Config, reference: dict, batches: dict, steps: int, dtype: torch.dtype) -> dict:
    """Ours trained from the reference's initial weights: optimizer-setting differences (before
    any scheduler scales the learning rates), EMA decays, per-step losses, gradient norms and
    learning-rate factors, final EMA and model weights."""
    convert = FAMILIES[reference.get('version', 'v1')][0]
    model = build_model(cfg, reference['state_dict'], dtype, convert)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    groups = group_differences(reference['param_groups'], group_settings(model, optim_wrapper),
                               convert)
    schedulers = build_schedulers(cfg, optim_wrapper)
    hook = build_ema_hook(cfg, model)
    losses, grad_norms, lr_factors = train(model, optim_wrapper, schedulers, hook, batches, steps,
                                           dtype)
    return dict(initial=digest(reference['state_dict']), group_differences=groups,
                ema_decays=[ema_decay(hook, k + 1) for k in range(steps)], losses=losses,
                grad_norms=grad_norms, lr_factors=lr_factors, num_layers=model.decoder.num_layers,
                ema_state_dict=hook.ema_model.module.state_dict(),
                final_state_dict=model.state_dict())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('reference', help='file written by rtdetr_trajectory_reference.py')
    parser.add_argument('config', help='detr_plugin config of the same model')
    parser.add_argument('--batches', help='batches file (default: the one the reference names)')
    parser.add_argument('--steps', type=int, help='default: all the reference has')
    parser.add_argument('--tol-loss', type=float, default=1e-6)
    parser.add_argument('--tol-ema', type=float, default=1e-6)
    parser.add_argument('--noise-reference',
                        help='another run of the original (e.g. --float64): its per-step '
                        'difference from the reference is printed beside ours, as the yardstick '
                        'of float rounding')
    parser.add_argument('--json', help='also write the comparison to this file')
    parser.add_argument('--save-ours', help='also save our trajectory to this file')
    parser.add_argument('--ours', help='compare this saved trajectory instead of training')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, as tools/train.py')
    args = parser.parse_args()
    register_all_modules()
    MMLogger.get_instance('mmengine', log_level='WARNING')  # not every parameter's options
    reference = torch.load(args.reference, map_location='cpu', weights_only=False)
    batches = torch.load(args.batches or reference['batches'], weights_only=False)
    steps = args.steps or reference['steps']
    dtype = torch.float64 if reference['dtype'] == 'torch.float64' else torch.float32
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)

    if args.ours:
        ours = torch.load(args.ours, map_location='cpu', weights_only=False)
        if ours['initial'] != digest(reference['state_dict']):
            raise SystemExit(f'{args.ours} was trained from other initial weights than '
                             f'{args.reference} holds')
    else:
        ours = run_ours(cfg, reference, batches, steps, dtype)
        if args.save_ours:
            torch.save(ours, args.save_ours)
    if len(reference['losses']) < steps:
        print(f'{args.reference} has no trajectory of {steps} steps: ours trained only')
        return
    groups = ours['group_differences']
    print(f'optimizer settings: {len(groups)} differences from the original\'s groups')
    for row in groups:
        print('  ' + ' | '.join(row))
    decays, grad_norms = ours['ema_decays'][:steps], ours['grad_norms'][:steps]
    decay_diff = [abs(a - b) for a, b in zip(decays, reference['ema_decays'])]
    print(f'EMA decay: update 1 ours {decays[0]:g}, the original {reference["ema_decays"][0]:g}; '
          f'updates 2-{steps} max abs diff {max(decay_diff[1:], default=0.0):.1e}')
    # references written before the warm-up was recorded trained at a constant learning rate
    their_factors = reference.get('lr_factors', [1.0] * steps)[:steps]
    our_factors = ours.get('lr_factors', [1.0] * steps)[:steps]
    lr_diff = max((abs(a - b) for a, b in zip(our_factors, their_factors)), default=0.0)
    print(f'learning-rate factor: steps 1-{steps} ours {our_factors[0]:g} .. '
          f'{our_factors[-1]:g}, the original {their_factors[0]:g} .. '
          f'{their_factors[-1]:g}; max abs diff {lr_diff:.1e}')
    convert, loss_names = FAMILIES[reference.get('version', 'v1')]
    rows = loss_differences(reference['losses'][:steps], ours['losses'][:steps],
                            ours['num_layers'], loss_names)
    if steps != len(reference['losses']):  # the saved weights are those after the last step
        raise SystemExit(f'--steps {steps}: the reference ran {len(reference["losses"])}')
    ema = state_difference(reference['ema_state_dict'], ours['ema_state_dict'], convert)
    final = state_difference(reference['final_state_dict'], ours['final_state_dict'], convert)
    ema_diff = max(diff for diff, _ in ema.values())

    noise = None
    if args.noise_reference:
        other = torch.load(args.noise_reference, map_location='cpu', weights_only=False)
        noise = [abs(a['total'] - b['total']) for a, b in zip(reference['losses'], other['losses'])]
    print('\n| step | original loss | ours | abs diff | max term diff (term) | grad norm diff |'
          + (' original vs noise reference |' if noise else ''))
    print('|---|---|---|---|---|---|' + ('---|' if noise else ''))
    for step in sorted(set(REPORT_STEPS) & set(range(1, steps + 1)) | {steps}):
        row = rows[step - 1]
        print(f'| {step} | {row["theirs"]:.6f} | {row["ours"]:.6f} | {row["diff"]:.1e} | '
              f'{row["term_diff"]:.1e} ({row["worst_term"]}) | '
              f'{abs(grad_norms[step - 1] - reference["grad_norms"][step - 1]):.1e} |'
              + ((f' {noise[step - 1]:.1e} |' if step <= len(noise) else ' - |') if noise
                 else ''))
    worst = max(range(steps), key=lambda i: rows[i]['diff'])
    print(f'worst total-loss diff: {rows[worst]["diff"]:.2e} at step {worst + 1}')
    if noise:  # the noise reference may be shorter
        print(f'steps 1-{len(noise)}: largest total-loss diff ours - original '
              f'{max(row["diff"] for row in rows[:len(noise)]):.2e}, noise reference - original '
              f'{max(noise):.2e}')
    for name, diffs in (('final EMA', ema), ('final model', final)):
        print(f'{name}: weights max abs diff {diffs["weights"][0]:.2e} ({diffs["weights"][1]}), '
              f'BatchNorm statistics max rel diff {diffs["statistics"][0]:.2e} '
              f'({diffs["statistics"][1]})')
    passed = (not groups and rows[worst]['diff'] <= args.tol_loss and ema_diff <= args.tol_ema
              and lr_diff <= LR_TOLERANCE)
    print(f'{reference["dtype"]}, {steps} steps, tolerance {args.tol_loss:g} (loss) / '
          f'{args.tol_ema:g} (EMA) -> {"PASS" if passed else "FAIL"}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(reference=args.reference, config=args.config, dtype=reference['dtype'],
                           steps=rows, grad_norms=dict(ours=grad_norms,
                                                       theirs=reference['grad_norms'][:steps]),
                           group_differences=groups, lr_factor_diff=lr_diff, ema_decays=dict(
                               ours=decays, theirs=reference['ema_decays'][:steps]),
                           ema_diff=ema, model_diff=final,
                           noise=noise, passed=passed), f, indent=1)
    sys.exit(0 if passed else 1)


if __name__ == '__main__':
    main()
