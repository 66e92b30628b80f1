"""Where a training iteration's time goes, on every rank: the wait for data, the forward pass
(with the losses and the Hungarian matching), the backward pass (with DDP's gradient all-reduce),
the optimizer step, and the rest (zero_grad, the hooks after the iteration: EMA, logging).

    python tools/analysis/step_breakdown.py CONFIG --work-dir DIR [--iters 40] [--skip 10]
    torchrun --nproc_per_node 2 tools/analysis/step_breakdown.py CONFIG --launcher pytorch ...
    ... [--fixed-size 640 640] [--profile 20] [--cfg-options KEY=VALUE ...]

Each phase is timed twice:

* host: wall time of the Python calls that make it up (``time.perf_counter``);
* GPU: CUDA events recorded at the same points on the current stream, so the time the stream took
  from one point to the next, its idle gaps included.

A phase that takes longer on the host than on the GPU stream is host-bound (Python, the matcher on
the host, a synchronisation); one that takes longer on the stream ran its kernels behind the host.
Timing adds no synchronisation: the events are read once, after training. ``--fixed-size H W``
trains on every image resized to H x W (no random resizing, cropping or multi-scale batches), so
that every step does the same work and runs with different process counts compare.

The medians over iterations ``--skip`` .. ``--iters`` of every rank are printed by rank 0 and
written to ``DIR/step_breakdown.json``. ``--profile K`` also records iterations K and K + 1 with
``torch.profiler`` on every rank and writes the operators that took the most host and GPU time to
``DIR/profile_rank{R}.txt`` (``--trace``: and a Chrome trace ``DIR/trace_rank{R}.json``).
``--sync-debug K`` lists, for iteration K on every rank, each place in the Python code that made
the host wait for the GPU (a ``.item()``, a ``.cpu()``, a boolean-mask index...) with its count,
in ``DIR/sync_points_rank{R}.txt``: every such wait keeps the host from queueing work ahead.
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import time
import traceback
import warnings
from collections import Counter
from typing import Dict, List, Optional

import torch
from mmengine.dist import all_gather_object, get_rank
from mmengine.hooks import Hook

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'tools'))
import train  # noqa: E402  tools/train.py: the same config handling and runner

# Marks in the order an iteration passes them; a phase runs from one mark to the next.
MARKS = ('before_iter', 'backward_start', 'backward_end', 'step_end', 'after_iter')
PHASES = ('forward', 'backward', 'step', 'rest')


class StepBreakdownHook(Hook):
    """Records host times and CUDA events at the marks of every training iteration."""

    priority = 'LOWEST'   # after_train_iter runs after every other hook's (EMA, logger)

    def __init__(self, skip: int, profile_at: Optional[int] = None, trace: bool = False,
                 sync_debug_at: Optional[int] = None):
        self.skip, self.profile_at, self.trace = skip, profile_at, trace
        self.sync_debug_at = sync_debug_at
        self.sync_recorder = None
        self.iters: List[Dict[str, tuple]] = []   # per iteration: mark -> (host s, event)
        self.last_end: Optional[tuple] = None      # the previous iteration's after_iter mark
        self.profiler = None

    def mark(self, name: str) -> None:
        event = None
        if torch.cuda.is_available():
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        self.iters[-1][name] = (time.perf_counter(), event)

    def before_train(self, runner) -> None:
        wrapper = runner.optim_wrapper
        backward, step = wrapper.backward, wrapper.step

        def timed_backward(*args, **kwargs):
            self.mark('backward_start')
            out = backward(*args, **kwargs)
            self.mark('backward_end')
            return out

        def timed_step(*args, **kwargs):
            out = step(*args, **kwargs)
            self.mark('step_end')
            return out

        wrapper.backward, wrapper.step = timed_backward, timed_step

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if self.profile_at is not None and runner.iter == self.profile_at:
            self.profiler = torch.profiler.profile(activities=profiler_activities())
            self.profiler.__enter__()
        if self.sync_debug_at is not None and runner.iter == self.sync_debug_at:
            self.sync_recorder = SyncRecorder()
            self.sync_recorder.__enter__()
        sizes = sorted({tuple(img.shape[-2:]) for img in data_batch['inputs']})
        self.iters.append({'previous_end': self.last_end, 'sizes': sizes})
        self.mark('before_iter')

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.mark('after_iter')
        self.last_end = self.iters[-1]['after_iter']
        if self.profiler is not None and runner.iter + 1 == self.profile_at + 2:
            self.profiler.__exit__(None, None, None)
            write_profile(self.profiler, pathlib.Path(runner.work_dir), self.trace)
            self.profiler = None
        if self.sync_recorder is not None:
            self.sync_recorder.__exit__(None, None, None)
            path = pathlib.Path(runner.work_dir) / f'sync_points_rank{get_rank()}.txt'
            path.write_text(self.sync_recorder.report(runner.iter))
            self.sync_recorder = None

    def after_train(self, runner) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        report = phase_medians(self.iters[self.skip:])
        reports = all_gather_object(report)
        if get_rank() == 0:
            out = pathlib.Path(runner.work_dir) / 'step_breakdown.json'
            out.write_text(json.dumps(reports, indent=1))
            print(format_reports(reports), flush=True)


class SyncRecorder:
    """Counts the call sites of the operations that make the host wait for the GPU, from
    ``torch.cuda.set_sync_debug_mode('warn')``'s warnings (CPU runs: none are recorded)."""

    def __init__(self):
        self.sites: Counter = Counter()
        self.catcher = warnings.catch_warnings()

    def __enter__(self):
        self.catcher.__enter__()
        warnings.simplefilter('always')
        warnings.showwarning = self.record
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode('warn')
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode('default')
        self.catcher.__exit__(*exc)

    def record(self, message, category, filename, lineno, file=None, line=None) -> None:
        if 'synchronizing' not in str(message):
            return
        torch_dir = os.path.dirname(torch.__file__)
        frames = [f for f in traceback.extract_stack()[:-1]
                  if not f.filename.startswith(torch_dir) and 'warnings' not in f.filename]
        self.sites[' <- '.join(f'{os.path.relpath(f.filename, ROOT)}:{f.lineno} {f.name}'
                               for f in reversed(frames[-3:]))] += 1

    def report(self, iteration: int) -> str:
        lines = [f'# rank {get_rank()}, iteration {iteration}: {sum(self.sites.values())} waits '
                 'for the GPU (count, innermost call site first)']
        lines += [f'{count:5d}  {site}' for site, count in self.sites.most_common()]
        return '\n'.join(lines) + '\n'


def profiler_activities() -> list:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities


def write_profile(profiler, work_dir: pathlib.Path, trace: bool) -> None:
    rank = get_rank()
    averages = profiler.key_averages()
    tables = [f'# rank {rank}, 2 iterations, by self host time',
              averages.table(sort_by='self_cpu_time_total', row_limit=30)]
    if torch.cuda.is_available():
        tables += ['# by self GPU time', averages.table(sort_by='self_device_time_total',
                                                          row_limit=30)]
    (work_dir / f'profile_rank{rank}.txt').write_text('\n'.join(tables))
    if trace:
        profiler.export_chrome_trace(str(work_dir / f'trace_rank{rank}.json'))


def phase_medians(iters: List[Dict[str, tuple]]) -> dict:
    """Median milliseconds of every phase, host and GPU, over the given iterations."""
    complete = [it for it in iters if all(m in it for m in MARKS)]
    if not complete:
        raise RuntimeError('no complete iteration to time: raise --iters or lower --skip (an '
                           'iteration without an optimizer step, e.g. gradient accumulation, '
                           'is not timed)')
    host = {p: [] for p in ('data',) + PHASES + ('iteration',)}
    gpu = {p: [] for p in PHASES + ('iteration',)}
    for it in complete:
        for phase, (start, end) in zip(PHASES, zip(MARKS, MARKS[1:])):
            host[phase].append(1e3 * (it[end][0] - it[start][0]))
            if it[start][1] is not None:
                gpu[phase].append(it[start][1].elapsed_time(it[end][1]))
        previous = it['previous_end']
        if previous is not None:
            host['data'].append(1e3 * (it['before_iter'][0] - previous[0]))
            host['iteration'].append(1e3 * (it['after_iter'][0] - previous[0]))
            if previous[1] is not None:
                gpu['iteration'].append(previous[1].elapsed_time(it['after_iter'][1]))
    median = lambda values: round(statistics.median(values), 2) if values else None  # noqa: E731
    sizes = sorted({size for it in complete for size in it['sizes']})
    return dict(rank=get_rank(), iterations=len(complete), image_sizes=sizes,
                host={k: median(v) for k, v in host.items()},
                gpu={k: median(v) for k, v in gpu.items()})


def format_reports(reports: List[dict]) -> str:
    """A table: one row per phase, host / GPU median ms per rank."""
    columns = ('data',) + PHASES + ('iteration',)
    sizes = sorted({tuple(size) for r in reports for size in r['image_sizes']})
    shown = ', '.join(f'{h}x{w}' for h, w in sizes[:4]) + (' ...' if len(sizes) > 4 else '')
    lines = [f'median ms per phase over {reports[0]["iterations"]} iterations (host / GPU stream); '
             f'image sizes (h x w, before batching): {shown}',
             f'{"rank":>4} ' + ' '.join(f'{c:>15}' for c in columns)]
    for r in reports:
        cells = []
        for c in columns:
            g = r['gpu'].get(c)
            cells.append(f'{r["host"][c]} / {"-" if g is None else g}')
        lines.append(f'{r["rank"]:>4} ' + ' '.join(f'{c:>15}' for c in cells))
    return '\n'.join(lines)


def only_train(cfg, iters: int) -> None:
    """``iters`` training iterations and nothing else: no validation, no checkpoint, no learning
    rate schedule (an epoch-based one does not fit an iteration-based loop)."""
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters + 1)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.default_hooks.checkpoint = None
    cfg.param_scheduler = None
    cfg.log_processor = dict(cfg.get('log_processor', {}), by_epoch=False)


def fix_input_size(cfg, height: int, width: int) -> None:
    """Replaces the training pipeline by load, resize to (height, width), flip, pack; and drops
    the data preprocessor's batch augments (RT-DETR's multi-scale resize)."""
    dataset = cfg.train_dataloader.dataset
    load = [t for t in dataset.pipeline if t['type'] in ('LoadImageFromFile', 'LoadAnnotations')]
    dataset.pipeline = load + [dict(type='Resize', scale=(width, height), keep_ratio=False),
                               dict(type='RandomFlip', prob=0.5), dict(type='PackDetInputs')]
    cfg.model.data_preprocessor.pop('batch_augments', None)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('--work-dir', required=True)
    p.add_argument('--iters', type=int, default=40, help='training iterations to run')
    p.add_argument('--skip', type=int, default=10, help='first iterations left out of the medians')
    p.add_argument('--profile', type=int, help='record iterations K and K+1 with torch.profiler')
    p.add_argument('--trace', action='store_true', help='with --profile: also a Chrome trace')
    p.add_argument('--sync-debug', type=int, metavar='K',
                   help='list the places that made the host wait for the GPU in iteration K')
    p.add_argument('--fixed-size', type=int, nargs=2, metavar=('H', 'W'),
                   help='train on images resized to H x W, without random resizing')
    p.add_argument('--amp', action='store_true')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    p.add_argument('--cfg-options', nargs='+', default=[])
    args = p.parse_args(argv)
    if args.skip >= args.iters:
        p.error(f'--skip {args.skip} must be below --iters {args.iters}')
    if args.profile is not None and not args.skip <= args.profile < args.iters - 1:
        p.error(f'--profile must lie in [--skip, --iters - 2], got {args.profile}')
    if args.sync_debug is not None and not 0 <= args.sync_debug < args.iters:
        p.error(f'--sync-debug must lie in [0, --iters - 1], got {args.sync_debug}')
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    train_argv = [args.config, '--work-dir', args.work_dir, '--launcher', args.launcher,
                  '--cfg-options', 'default_hooks.logger.interval=10', *args.cfg_options]
    targs = train.parse_args(train_argv + (['--amp'] if args.amp else []))

    def adjust(cfg) -> None:
        only_train(cfg, args.iters)
        if args.fixed_size:
            fix_input_size(cfg, *args.fixed_size)

    runner = train.runner_from_args(targs, adjust)
    runner.register_hook(StepBreakdownHook(args.skip, args.profile, args.trace, args.sync_debug))
    runner.train()


if __name__ == '__main__':
    main()
