"""Resume after a crash: an uninterrupted training run against one killed mid-epoch and resumed.

A. CONFIG trained for ``--epochs`` epochs with a checkpoint per epoch.
B. The same command, killed with SIGKILL (the launcher and every process under it, at once, as
   a crashed node would lose them; Linux) once its first checkpoint exists and ``--kill-after`` more iterations have been logged, i.e. in the
   middle of the next epoch; then the same command again with ``--resume``.

The report lists every iteration's loss in A and in B (before the checkpoint from the killed run,
after it from the resumed one; the iterations the killed run did past its checkpoint are redone
and shown beside their redo) and compares A's and B's final weights. On CPU with
``--deterministic`` both must be bit-identical (``--expect-exact`` turns any difference into exit
status 1), data workers and validations included, as long as the training loader's workers restart
every epoch (``persistent_workers=False``, our dataset configs; see RNGStateHook); on GPUs,
atomics make them differ within noise.

    python tools/analysis/resume_check.py configs/rtdetr/rtdetr_r18vd_1xb8-demo.py --gpus 2 \\
        --epochs 3 --kill-after 5 --work-dir work_dirs/resume_check
    python tools/analysis/resume_check.py CONFIG --gpus 0 --deterministic --expect-exact ...
"""
import argparse
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = pathlib.Path(__file__).resolve().parents[2]


def parse_args(argv: Optional[List[str]] = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('--work-dir', required=True)
    p.add_argument('--gpus', type=int, default=1,
                   help='0: tools/train.py on CPU; N >= 1: tools/dist_train.sh CONFIG N')
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--kill-after', type=int, default=2,
                   help='iterations logged after the first checkpoint before the kill')
    p.add_argument('--deterministic', action='store_true', help='randomness.deterministic=True')
    p.add_argument('--expect-exact', action='store_true',
                   help='exit 1 unless the final weights and every loss are identical')
    p.add_argument('--port', type=int, default=29650)
    p.add_argument('--timeout', type=float, default=600, help='seconds per run')
    p.add_argument('--cfg-options', nargs='+', default=[], help='added to every run')
    return p.parse_args(argv)


def train_command(args, work_dir: pathlib.Path, resume: bool) -> List[str]:
    if args.gpus == 0:
        cmd = [sys.executable, str(ROOT / 'tools' / 'train.py'), args.config]
    else:
        cmd = ['bash', str(ROOT / 'tools' / 'dist_train.sh'), args.config, str(args.gpus)]
    cmd += ['--work-dir', str(work_dir), *(['--resume'] if resume else [])]
    return cmd + ['--cfg-options', f'train_cfg.max_epochs={args.epochs}', 'randomness.seed=0',
                  f'randomness.deterministic={args.deterministic}',
                  'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1',
                  'log_processor.window_size=1',  # each logged loss is that iteration's
                  *args.cfg_options]


def environment(args) -> Dict[str, str]:
    path = os.environ.get('PYTHONPATH')
    env = dict(os.environ, PORT=str(args.port),
               PYTHONPATH=str(ROOT) + (os.pathsep + path if path else ''))
    if args.gpus == 0:
        env['CUDA_VISIBLE_DEVICES'] = ''
    return env


def scalars(run_dir: pathlib.Path) -> List[dict]:
    """The training rows (one per iteration) of one run's vis_data/scalars.json."""
    path = run_dir / 'vis_data' / 'scalars.json'
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by the kill
            continue
    return [r for r in rows if 'loss' in r]


def run_dirs(work_dir: pathlib.Path) -> List[pathlib.Path]:
    """The timestamped directories the runs made in work_dir, oldest first."""
    return sorted(d for d in work_dir.iterdir() if d.is_dir() and re.fullmatch(r'\d{8}_\d{6}', d.name))


def run_to_end(args, work_dir: pathlib.Path, resume: bool, log: pathlib.Path) -> str:
    with log.open('w') as out:
        proc = subprocess.run(train_command(args, work_dir, resume), cwd=ROOT, env=environment(args),
                              stdout=out, stderr=subprocess.STDOUT, timeout=args.timeout)
    text = log.read_text()
    if proc.returncode:
        sys.exit(f'training failed (rc {proc.returncode}), log {log}:\n{text[-3000:]}')
    return text


def process_tree(root: int) -> List[int]:
    """root and all its descendants (from /proc): torchrun starts its ranks in new sessions, so a
    process-group kill would leave them training."""
    children: Dict[int, List[int]] = {}
    for stat in pathlib.Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def kill_tree(root: int) -> None:
    for pid in process_tree(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_and_kill(args, work_dir: pathlib.Path, log: pathlib.Path) -> Dict[str, int]:
    """Starts run B and kills its process group mid-epoch; returns where it was."""
    with log.open('w') as out:
        proc = subprocess.Popen(train_command(args, work_dir, resume=False), cwd=ROOT,
                                env=environment(args), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + args.timeout
        checkpoint_iter = None
        while True:
            if proc.poll() is not None:
                sys.exit(f'run B ended (rc {proc.returncode}) before it could be killed; log {log}:'
                         f'\n{log.read_text()[-3000:]}')
            if time.monotonic() > deadline:
                sys.exit(f'run B: no kill point within {args.timeout} s; log {log}')
            dirs = run_dirs(work_dir)
            rows = scalars(dirs[-1]) if dirs else []
            logged = max((r['iter'] for r in rows), default=0)
            if checkpoint_iter is None and (work_dir / 'last_checkpoint').exists():
                checkpoint_iter = logged
            if checkpoint_iter is not None and logged >= checkpoint_iter + args.kill_after:
                kill_tree(proc.pid)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
        proc.wait(timeout=60)
    time.sleep(1)  # let the killed ranks' files settle before looking
    if (work_dir / f'epoch_{args.epochs}.pth').exists():
        sys.exit('run B reached its last epoch despite the kill (a process survived it?)')
    return dict(checkpoint_iter=checkpoint_iter, killed_after_iter=logged)


def compare_weights(path_a: pathlib.Path, path_b: pathlib.Path) -> dict:
    import torch
    a, b = (torch.load(p, map_location='cpu', weights_only=False)['state_dict']
            for p in (path_a, path_b))
    if a.keys() != b.keys():
        sys.exit(f'the final checkpoints hold different tensors: {sorted(a.keys() ^ b.keys())[:5]}')
    floats = [k for k in a if a[k].is_floating_point()]
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    max_abs = max((float((a[k].double() - b[k].double()).abs().max()) for k in floats
                   if a[k].numel()), default=0.0)
    sq_diff = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in floats)
    sq_norm = sum(float(a[k].double().pow(2).sum()) for k in floats)
    return dict(tensors=len(a), differing=differing, max_abs_diff=max_abs,
                relative_diff=(sq_diff / max(sq_norm, 1e-30)) ** 0.5)


def check(argv: Optional[List[str]] = None) -> dict:
    """Runs A, B (killed) and B (resumed); returns the comparison (also printed)."""
    args = parse_args(argv)
    root = pathlib.Path(args.work_dir)
    work_a, work_b = root / 'A_uninterrupted', root / 'B_killed_and_resumed'
    for d in (work_a, work_b):
        d.mkdir(parents=True, exist_ok=True)
        if any(d.iterdir()):
            sys.exit(f'{d} is not empty: give a fresh --work-dir')
    run_to_end(args, work_a, resume=False, log=root / 'A.log')
    kill = run_and_kill(args, work_b, log=root / 'B_killed.log')
    resumed_log = run_to_end(args, work_b, resume=True, log=root / 'B_resumed.log')
    found = re.search(r'resumed epoch: (\d+), iter: (\d+)', resumed_log)
    if not found:
        sys.exit(f'the resumed run did not report resuming; log {root / "B_resumed.log"}')
    resumed_iter = int(found.group(2))

    rows_a = {r['iter']: r for r in scalars(run_dirs(work_a)[-1])}
    killed_dir, resumed_dir = run_dirs(work_b)[-2:]
    killed = {r['iter']: r for r in scalars(killed_dir)}
    resumed = {r['iter']: r for r in scalars(resumed_dir)}
    rows_b = {i: r for i, r in killed.items() if i <= resumed_iter}
    rows_b.update(resumed)
    last = f'epoch_{args.epochs}.pth'
    weights = compare_weights(work_a / last, work_b / last)
    result = dict(kill, resumed_epoch=int(found.group(1)), resumed_iter=resumed_iter,
                  iterations=len(rows_a), loss_a=[rows_a[i]['loss'] for i in sorted(rows_a)],
                  loss_b=[rows_b[i]['loss'] for i in sorted(rows_b)],
                  redone_killed=[killed[i]['loss'] for i in sorted(killed) if i > resumed_iter],
                  redone_resumed=[resumed[i]['loss'] for i in sorted(killed)
                                  if i > resumed_iter and i in resumed],
                  **weights)
    report(args, result)
    exact = not weights['differing'] and result['loss_a'] == result['loss_b']
    if args.expect_exact and not exact:
        sys.exit(1)
    return result


def report(args, r: dict) -> None:
    where = 'CPU' if args.gpus == 0 else f'{args.gpus} GPU(s)'
    print(f'{args.config} on {where}: run B killed (SIGKILL) after iteration '
          f'{r["killed_after_iter"]} (first checkpoint at iteration {r["checkpoint_iter"]}); '
          f'resumed from epoch {r["resumed_epoch"]}, iteration {r["resumed_iter"]}')
    print('\n| iter | loss A (uninterrupted) | loss B (killed + resumed) | B - A | note |')
    print('|---:|---:|---:|---:|---|')
    for i, (la, lb) in enumerate(zip(r['loss_a'], r['loss_b']), start=1):
        note = 'resumed run' if i > r['resumed_iter'] else 'killed run'
        if r['resumed_iter'] < i <= r['killed_after_iter']:
            note += f' (killed run had {r["redone_killed"][i - r["resumed_iter"] - 1]:.6f})'
        print(f'| {i} | {la:.6f} | {lb:.6f} | {lb - la:+.2e} | {note} |')
    if len(r['loss_a']) != len(r['loss_b']):
        print(f'iteration counts differ: A {len(r["loss_a"])}, B {len(r["loss_b"])}')
    print(f'\nfinal weights (epoch_{args.epochs}.pth): {len(r["differing"])} of {r["tensors"]} '
          f'tensors differ; largest difference {r["max_abs_diff"]:.3e}, relative (L2 over all '
          f'weights) {r["relative_diff"]:.3e}')


if __name__ == '__main__':
    check()
