"""Resuming after a crash gives the same model as an uninterrupted run (CPU, deterministic).

Run A trains the DETR demo config for 3 epochs (2 iterations each, a checkpoint per epoch). Run B
is the same command, killed with SIGKILL as soon as its first checkpoint exists, then restarted
with --resume. Both final checkpoints must hold bit-identical weights and the last logged losses
must agree: the sampler order, the augmentation RNG (RNGStateHook in the default runtime; without
it RandomFlip's draws restart from the seed and 178 of the tensors differ) and the optimizer
state all carry over.
"""
import re
import signal
import subprocess
import time

import torch

DETR_DEMO = 'configs/detr/detr_r18_1xb8-demo.py'
MAX_EPOCHS = 3


def run_options(demo_runs, data):
    return ['--cfg-options', f'train_cfg.max_epochs={MAX_EPOCHS}', 'randomness.seed=0',
            'randomness.deterministic=True', 'default_hooks.checkpoint.interval=1',
            *demo_runs.tiny_run_options(data, batch_size=2)]


def last_losses(stdout: str) -> str:
    """The loss terms of the last training log line (timings dropped)."""
    lines = [line for line in stdout.splitlines() if 'Epoch(train)' in line]
    assert lines, stdout[-3000:]
    return ' '.join(re.findall(r'\S*loss\S*: \S+', lines[-1]))


def test_resume_after_sigkill_is_exact(tmp_path, demo_runs):
    data = tmp_path / 'data'
    demo_runs.make_tiny_dataset(data, num_train=4)
    work_a, work_b = tmp_path / 'uninterrupted', tmp_path / 'crashed'
    run = dict(cwd=demo_runs.REPO_ROOT, env=demo_runs.tool_env(), text=True)

    whole = subprocess.run(demo_runs.train_command(DETR_DEMO, '--work-dir', str(work_a),
                                                   *run_options(demo_runs, data)),
                           capture_output=True, timeout=200, **run)
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]

    crashing = subprocess.Popen(demo_runs.train_command(DETR_DEMO, '--work-dir', str(work_b),
                                                        *run_options(demo_runs, data)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **run)
    try:
        deadline = time.monotonic() + 150
        while not (work_b / 'last_checkpoint').exists():
            assert crashing.poll() is None, 'run B ended before writing a checkpoint'
            assert time.monotonic() < deadline, 'no checkpoint after 150 s'
            time.sleep(0.02)
        still_running = crashing.poll() is None
        crashing.send_signal(signal.SIGKILL)
    finally:
        crashing.kill()
        crashing.wait(timeout=30)
    assert still_running, 'run B finished before it could be killed'
    assert not (work_b / f'epoch_{MAX_EPOCHS}.pth').exists()
    resumed_epoch = int(re.search(r'epoch_(\d+)\.pth$',
                                  (work_b / 'last_checkpoint').read_text().strip()).group(1))
    assert 1 <= resumed_epoch < MAX_EPOCHS

    resumed = subprocess.run(demo_runs.train_command(DETR_DEMO, '--work-dir', str(work_b),
                                                     '--resume', *run_options(demo_runs, data)),
                             capture_output=True, timeout=200, **run)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    resumed_log = resumed.stdout + resumed.stderr
    assert f'resumed epoch: {resumed_epoch}, iter: {2 * resumed_epoch}' in resumed_log
    assert 'Epoch(train) [1]' not in resumed_log   # no epoch is trained twice

    final_a, final_b = (torch.load(work / f'epoch_{MAX_EPOCHS}.pth', map_location='cpu',
                                   weights_only=False) for work in (work_a, work_b))
    weights_a, weights_b = final_a['state_dict'], final_b['state_dict']
    assert weights_a.keys() == weights_b.keys()
    differing = [name for name, tensor in weights_a.items()
                 if not torch.equal(tensor, weights_b[name])]
    assert not differing, f'{len(differing)} tensors differ, e.g. {differing[:5]}'
    assert last_losses(whole.stdout + whole.stderr) == last_losses(resumed_log)
