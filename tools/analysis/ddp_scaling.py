"""Multi-GPU check of one config: 1-GPU vs N-GPU loss, N-GPU throughput, and N-GPU evaluation.

Runs tools/dist_train.sh three times and tools/dist_test.sh twice, then prints a report:

A. 1 GPU, ``--batch`` images per iteration.
B. N GPUs, ``--batch / N`` images per GPU: the same total batch, so the first iterations' losses
   should match A's within noise (same seed, same images per iteration: the sampler gives rank r
   the items r, r + N, ... of the same shuffled order). Logged losses are rank 0's.
C. N GPUs, ``--batch`` images per GPU: throughput (images/s, median iteration time after
   ``--skip`` iterations) against A's; ideal scaling is N x.
D. B's final checkpoint evaluated on 1 and on N GPUs: the metrics must be equal (the N-GPU
   evaluation gathers every rank's results).

    python tools/analysis/ddp_scaling.py configs/rtdetr/rtdetr_r18vd_1xb8-demo.py --gpus 2 \\
        --work-dir work_dirs/ddp_scaling/rtdetr
"""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('--gpus', type=int, default=2)
    p.add_argument('--batch', type=int, default=8, help='total batch of runs A and B')
    p.add_argument('--iters', type=int, default=50, help='iterations of each training run')
    p.add_argument('--skip', type=int, default=10, help='warm-up iterations left out of timing')
    p.add_argument('--compare', type=int, default=10, help='first iterations whose losses are shown')
    p.add_argument('--work-dir', required=True)
    p.add_argument('--port', type=int, default=29610)
    p.add_argument('--cfg-options', nargs='+', default=[], help='added to every run')
    p.add_argument('--no-eval', action='store_true', help='leave out D (the evaluations)')
    args = p.parse_args()
    if args.batch % args.gpus:
        p.error(f'--batch {args.batch} must be divisible by --gpus {args.gpus}')
    return args


def run(cmd, gpus: int, port: int, log: pathlib.Path) -> str:
    env = dict(os.environ, PORT=str(port))
    if gpus == 1 and 'CUDA_VISIBLE_DEVICES' not in os.environ:
        env['CUDA_VISIBLE_DEVICES'] = '0'
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    log.write_text(output)
    if proc.returncode:
        sys.exit(f'{" ".join(cmd)} failed (rc {proc.returncode}):\n{output[-3000:]}')
    return output


def train(args, name: str, gpus: int, batch_per_gpu: int, port: int) -> pathlib.Path:
    """One training run of at least ``args.iters`` iterations (whole epochs), each one logged."""
    work_dir = pathlib.Path(args.work_dir) / name
    cmd = ['bash', 'tools/dist_train.sh', args.config, str(gpus), '--work-dir', str(work_dir),
           '--cfg-options', f'train_dataloader.batch_size={batch_per_gpu}',
           f'train_cfg.max_epochs={epochs_for(args, gpus * batch_per_gpu)}',
           'train_cfg.val_interval=1000', 'default_hooks.logger.interval=1',
           # each logged time and loss is that iteration's own, not a running mean over the
           # window (whose first iterations carry CUDA and worker start-up)
           'log_processor.window_size=1',
           'default_hooks.checkpoint.interval=1000', 'randomness.seed=0', *args.cfg_options]
    run(cmd, gpus, port, pathlib.Path(args.work_dir) / f'{name}.log')
    return work_dir


def epochs_for(args, total_batch: int) -> int:
    """Whole epochs that give at least ``args.iters`` iterations at this total batch (on the
    dataset the runs train on: the config's, after ``--cfg-options``)."""
    from mmengine.config import Config, DictAction
    from pycocotools.coco import COCO
    cfg = Config.fromfile(str(ROOT / args.config))
    if args.cfg_options:
        options = argparse.ArgumentParser()
        options.add_argument('--options', nargs='+', action=DictAction)
        cfg.merge_from_dict(options.parse_args(['--options', *args.cfg_options]).options)
    ds = cfg.train_dataloader.dataset
    ann = os.path.join(ds.data_root, ds.ann_file)
    num_images = len(COCO(ann).getImgIds()) if os.path.exists(ann) else 400
    per_epoch = max(num_images // total_batch, 1)
    return -(-args.iters // per_epoch)


def scalars(work_dir: pathlib.Path) -> list:
    files = sorted(work_dir.glob('*/vis_data/scalars.json'))
    if not files:
        sys.exit(f'no scalars.json under {work_dir}')
    rows = [json.loads(line) for line in files[-1].read_text().splitlines()]
    return [r for r in rows if 'loss' in r]


def test_metrics(args, checkpoint: pathlib.Path, gpus: int, port: int) -> dict:
    name = f'test_{gpus}gpu'
    work_dir = pathlib.Path(args.work_dir) / name
    cmd = ['bash', 'tools/dist_test.sh', args.config, str(checkpoint), str(gpus),
           '--work-dir', str(work_dir), *(['--cfg-options', *args.cfg_options]
                                            if args.cfg_options else [])]
    output = run(cmd, gpus, port, pathlib.Path(args.work_dir) / f'{name}.log')
    found = re.search(r'Final metrics: (\{.*\})', output)
    if not found:
        sys.exit(f'no "Final metrics" line in {name}.log')
    return json.loads(found.group(1))


def main():
    args = parse_args()
    pathlib.Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    n = args.gpus
    a = scalars(train(args, 'A_1gpu', 1, args.batch, args.port))
    b_dir = train(args, f'B_{n}gpu_same_total_batch', n, args.batch // n, args.port + 1)
    b = scalars(b_dir)
    c = scalars(train(args, f'C_{n}gpu_throughput', n, args.batch, args.port + 2))
    checkpoint = sorted(b_dir.glob('*.pth'), key=os.path.getmtime)[-1]

    print(f'\n{args.config}: {n} GPUs; losses of rank 0, total batch {args.batch} in A and B')
    print('| iter | loss A (1 GPU) | loss B (N GPUs) | B - A |')
    print('|---|---|---|---|')
    pairs = list(zip(a, b))[:args.compare]
    for ra, rb in pairs:
        print(f"| {ra['iter']} | {ra['loss']:.4f} | {rb['loss']:.4f} | {rb['loss'] - ra['loss']:+.4f} |")
    mean_a = statistics.mean(ra['loss'] for ra, _ in pairs)
    mean_b = statistics.mean(rb['loss'] for _, rb in pairs)
    spread = statistics.pstdev(ra['loss'] for ra, _ in pairs)
    print(f"| mean of {len(pairs)} | {mean_a:.4f} | {mean_b:.4f} | {mean_b - mean_a:+.4f} "
          f"(A's own spread: {spread:.4f}) |")
    print('(rank 0 sees half of the total batch in B, so single iterations differ by sampling '
          'noise; trainable BatchNorm also sees half the images)')
    time_a = statistics.median(r['time'] for r in a[args.skip:])
    time_c = statistics.median(r['time'] for r in c[args.skip:])
    ips_a, ips_c = args.batch / time_a, n * args.batch / time_c
    data_a = statistics.median(r['data_time'] for r in a[args.skip:])
    data_c = statistics.median(r['data_time'] for r in c[args.skip:])
    print(f'\nthroughput, {args.batch} images per GPU: 1 GPU {ips_a:.1f} images/s '
          f'({time_a * 1e3:.1f} ms/iter), {n} GPUs {ips_c:.1f} images/s '
          f'({time_c * 1e3:.1f} ms/iter): {ips_c / ips_a:.2f}x')
    print(f'(of which waiting for data, median: 1 GPU {data_a * 1e3:.1f} ms/iter, {n} GPUs '
          f'{data_c * 1e3:.1f} ms/iter; a large share means the data loaders, not the GPUs, set '
          'the pace: raise train_dataloader.num_workers)')
    if args.no_eval:
        return
    metrics_1 = test_metrics(args, checkpoint, 1, args.port + 3)
    metrics_n = test_metrics(args, checkpoint, n, args.port + 4)
    keys = sorted(k for k in metrics_1 if k.startswith('coco/'))
    same = all(metrics_1[k] == metrics_n[k] for k in keys)
    print(f'\nevaluation of {checkpoint.name}: 1 GPU '
          + ', '.join(f'{k}={metrics_1[k]}' for k in keys[:3])
          + f'; {n} GPUs ' + ', '.join(f'{k}={metrics_n[k]}' for k in keys[:3])
          + f": {'identical' if same else 'DIFFERENT'} over {len(keys)} metrics")
    if not same:
        sys.exit(1)


if __name__ == '__main__':
    main()
