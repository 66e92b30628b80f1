"""Trains a detector from a config with mmengine's Runner.

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [CHECKPOINT]] [--auto-scale-lr]
                          [--trust-checkpoint] [--cfg-options KEY=VALUE ...]
                          [--launcher {none,pytorch,slurm,mpi}]

The checkpoint of ``--resume`` must fit the model; the config's ``load_from`` (fine-tuning) may
differ in the class heads, which then start fresh (one log line says which keys):
``CheckpointCheckHook``. Checkpoints are read weights-only (``--trust-checkpoint``: full
unpickling, only for files you trust).

Multi-GPU: ``tools/dist_train.sh`` (torchrun) or ``tools/slurm_train.sh`` (srun) call this script
with ``--launcher pytorch`` / ``--launcher slurm``.
"""
import argparse
import os
import os.path as osp
import sys
from typing import Callable, Optional

import torch
from mmengine.config import Config, DictAction
from mmengine.device import get_device
from mmengine.registry import RUNNERS
from mmengine.runner import Runner, find_latest_checkpoint

from detr_plugin.engine.hooks import CheckpointCheckHook
from detr_plugin.utils import (TRUST_OPTION, CheckpointError, register_all_modules,
                               set_default_model_wrapper, setup_cpu_distributed)
from detr_plugin.utils.checkpoint_loading import is_unsafe_pickle_error, unsafe_checkpoint_error


class UsageError(ValueError):
    """An option or config entry that cannot work here; reported as one line by ``main``."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--work-dir', help='directory for logs and checkpoints '
                        '(default: the config\'s work_dir, else ./work_dirs/CONFIG_NAME)')
    parser.add_argument('--amp', action='store_true',
                        help='train with automatic mixed precision (AmpOptimWrapper)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CHECKPOINT; without a path, from the latest checkpoint '
                        'in the work dir')
    parser.add_argument(TRUST_OPTION, action='store_true',
                        help='read --resume / load_from checkpoints with full unpickling, which '
                        'can run code: only for files you trust (by default only weights are '
                        'read)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by the actual batch size over the config\'s '
                        'auto_scale_lr.base_batch_size')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. train_cfg.max_epochs=12 '
                        'optim_wrapper.optimizer.lr=1e-4 (a list: key="[a,b]")')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank (older).
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args(argv)


def default_work_dir(config_path: str) -> str:
    """``./work_dirs/<config file name without .py>``."""
    return osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def enable_amp(cfg: Config) -> None:
    """Switches the config's optimizer wrapper to mixed precision: bfloat16 on GPUs that have it
    (Ampere and newer), float16 otherwise, with dynamic loss scaling (which float16 needs; with
    bfloat16 the scale rarely moves). A dtype set in the config is kept.

    mmengine's AmpOptimWrapper runs on accelerators only (CUDA, NPU, MLU, MUSA): without one,
    --amp is a UsageError rather than an assertion inside the Runner."""
    if get_device() in ('cpu', 'mps'):
        raise UsageError('--amp needs a GPU (mmengine\'s AmpOptimWrapper does not run on the '
                         'CPU); train without --amp here')
    wrapper_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper_type == 'AmpOptimWrapper':
        return
    if wrapper_type != 'OptimWrapper':
        raise UsageError(f'--amp needs optim_wrapper.type OptimWrapper or AmpOptimWrapper, '
                         f'but the config has {wrapper_type!r}')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'
    if cfg.optim_wrapper.get('dtype') is None:
        cfg.optim_wrapper.dtype = 'bfloat16' if bf16_supported() else 'float16'


def bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def enable_auto_scale_lr(cfg: Config) -> None:
    auto_scale_lr = cfg.get('auto_scale_lr')
    if not auto_scale_lr or 'base_batch_size' not in auto_scale_lr:
        raise UsageError('--auto-scale-lr needs auto_scale_lr = dict(base_batch_size=N) in the '
                         'config (N: the total batch size its learning rate was tuned for)')
    cfg.auto_scale_lr.enable = True


def setup_cfg(args: argparse.Namespace) -> Config:
    """Loads ``args.config`` and applies the command-line options to it."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    # Priority: --work-dir, then the config's work_dir, then one named after the config.
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(args.config)
    if args.amp:
        enable_amp(cfg)
    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg)
    if args.resume == 'auto':
        # The Runner finds the latest checkpoint itself. With none (a first run), the config's
        # load_from, if any, still initialises the model; runner_from_args says so.
        if find_latest_checkpoint(cfg.work_dir) is not None:
            cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        if '://' not in args.resume and not osp.isfile(args.resume):
            raise UsageError(f'--resume: checkpoint {args.resume!r} does not exist')
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def build_runner(cfg: Config) -> Runner:
    """mmengine's Runner, or the registered runner named by ``cfg.runner_type``."""
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


def runner_from_args(args: argparse.Namespace,
                     adjust_cfg: Optional[Callable[[Config], None]] = None) -> Runner:
    """The runner that ``tools/train.py`` trains with for these arguments; ``adjust_cfg`` edits
    the config first (analysis tools reuse the same set-up with fewer iterations)."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    register_all_modules(init_default_scope=False)
    cfg = setup_cfg(args)
    if adjust_cfg is not None:
        adjust_cfg(cfg)
    set_default_model_wrapper(cfg)
    setup_cpu_distributed(cfg)
    runner = build_runner(cfg)
    if cfg.get('load_from') is not None or cfg.get('resume'):
        # resuming needs the same model; load_from fine-tunes (class heads may differ)
        runner.register_hook(CheckpointCheckHook(partial=not cfg.get('resume')))
    if args.resume == 'auto' and not cfg.get('resume'):
        start = (f'starting from load_from {cfg.load_from!r}' if cfg.get('load_from')
                 else 'training from scratch')
        runner.logger.warning(f'--resume: no checkpoint to resume from in {cfg.work_dir} (it '
                              f'has no last_checkpoint file): {start}')
    return runner


def trust_checkpoints(trust: bool) -> None:
    """With --trust-checkpoint, mmengine's ``torch.load`` (resume, load_from) unpickles fully."""
    if trust:
        os.environ['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'] = '1'


def main(argv=None) -> None:
    args = parse_args(argv)
    trust_checkpoints(args.trust_checkpoint)
    runner = runner_from_args(args)
    try:
        runner.train()
    except Exception as error:
        if not is_unsafe_pickle_error(error):
            raise
        raise unsafe_checkpoint_error(runner.cfg.get('load_from')
                                      or find_latest_checkpoint(runner.work_dir), error) from None


if __name__ == '__main__':
    try:
        main()
    except (CheckpointError, UsageError) as error:
        sys.exit(f'error: {error}')
