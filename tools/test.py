"""Evaluates a detector on the config's test set with mmengine's Runner and prints the metrics.

    python tools/test.py CONFIG [CHECKPOINT] [--partial] [--trust-checkpoint] [--work-dir DIR]
                         [--out results.pkl] [--show] [--show-dir DIR]
                         [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

CHECKPOINT is read weights-only (``--trust-checkpoint``: full unpickling, for files you trust)
and must fit the model: a checkpoint of another architecture or class count is refused with one
line naming the keys that differ (exit status 1), unless ``--partial`` (the keys that do not fit
keep their initial values; one warning line says which). Original authors' DETR, Deformable
DETR and RT-DETR checkpoints are converted on the fly.
Without CHECKPOINT the model is evaluated as initialised for training (its ``init_weights``,
seeded by the config's ``randomness.seed``, 0 if unset): an untrained baseline. The last line
printed is ``Final metrics: {...}`` (JSON), for scripts to read.
"""
import argparse
import json
import os
import os.path as osp
import sys
import warnings

from mmengine.config import Config, DictAction
from mmengine.dist import broadcast, is_main_process
from mmengine.model import is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from detr_plugin.utils import (TRUST_OPTION, CheckpointError, dataset_meta_of,
                               load_detector_checkpoint, register_all_modules,
                               setup_cpu_distributed)

METRICS_PREFIX = 'Final metrics: '


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='checkpoint file; without it the untrained model is evaluated')
    parser.add_argument('--partial', action='store_true',
                        help='load a checkpoint that does not fit the model in part (the other '
                        'weights keep their initial values) instead of refusing it')
    parser.add_argument(TRUST_OPTION, action='store_true',
                        help='read the checkpoint with full unpickling, which can run code: only '
                        'for files you trust (by default only weights are read)')
    parser.add_argument('--work-dir', help='directory for the evaluation logs '
                        '(default: the config\'s work_dir, else ./work_dirs/CONFIG_NAME)')
    parser.add_argument('--out', help='dump the predictions to this pickle file (.pkl/.pickle)')
    parser.add_argument('--show', action='store_true', help='show the predictions in a window')
    parser.add_argument('--show-dir', help='save images with the predictions drawn, in this '
                        'directory (relative to the run\'s directory in the work dir)')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds each --show image stays')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. test_dataloader.batch_size=4')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out must be a .pkl or .pickle file, got {args.out!r}')
    return args


def enable_visualization(cfg: Config, show: bool, show_dir, wait_time: float) -> None:
    """Turns on drawing in the config's DetVisualizationHook for --show / --show-dir."""
    hooks = cfg.get('default_hooks') or {}
    if 'visualization' not in hooks:
        raise ValueError('--show and --show-dir need default_hooks.visualization '
                         '(a DetVisualizationHook) in the config')
    hook = cfg.default_hooks.visualization
    hook.draw = True
    if show:
        hook.show, hook.wait_time = True, wait_time
    if show_dir is not None:
        hook.test_out_dir = show_dir


def setup_cfg(args: argparse.Namespace) -> Config:
    """Loads ``args.config`` and applies the command-line options to it."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = None  # main() loads CHECKPOINT with the tools' checkpoint check
    if args.checkpoint is None and (cfg.get('randomness') or {}).get('seed') is None:
        # A reproducible untrained baseline: the same weights on every run.
        cfg.randomness = dict(cfg.get('randomness') or {}, seed=0)
    if args.show or args.show_dir is not None:
        enable_visualization(cfg, args.show, args.show_dir, args.wait_time)
    return cfg


def load_checkpoint(runner: Runner, cfg: Config, args: argparse.Namespace) -> None:
    """Loads CHECKPOINT into the runner's model (every rank reads the file), checked by
    ``load_detector_checkpoint``, with its class names as ``dataset_meta``."""
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    weights = load_detector_checkpoint(model, args.checkpoint, partial=args.partial,
                                       trust=args.trust_checkpoint)
    model.dataset_meta = dataset_meta_of(cfg, weights.meta)
    runner.logger.info(f'Loaded checkpoint {args.checkpoint}')


def init_untrained(runner: Runner) -> None:
    """Initialises the model as training would start (``init_weights``), identically on all ranks."""
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    if hasattr(model, 'init_weights'):
        model.init_weights()
    for tensor in model.state_dict().values():
        broadcast(tensor)


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    register_all_modules(init_default_scope=False)
    cfg = setup_cfg(args)
    setup_cpu_distributed(cfg)
    if args.checkpoint is None:
        warnings.warn(f'tools/test.py: no checkpoint given: evaluating the UNTRAINED model (random '
                      f'initialisation, seed {cfg.randomness["seed"]}); its metrics are a baseline, '
                      f'not the detector\'s accuracy', stacklevel=1)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if args.out is not None:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    if args.checkpoint is None:
        init_untrained(runner)
    else:
        load_checkpoint(runner, cfg, args)
    metrics = runner.test()
    if is_main_process():
        print(METRICS_PREFIX + json.dumps(metrics, default=float), flush=True)
    return metrics


if __name__ == '__main__':
    try:
        main()
    except CheckpointError as error:
        sys.exit(f'error: {error}')
