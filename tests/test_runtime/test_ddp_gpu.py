"""2-GPU DDP through the real launch scripts (NCCL): tools/dist_train.sh (torchrun) and
tools/slurm_train.sh under the Slurm stand-in of tools/misc/slurm_standin (srun starts one task
per GPU with the SLURM_* variables; mmengine's slurm launcher builds the process group from them).

As in the CPU test, rank 1's batches hold only images without boxes, so a parameter left without
gradient there would fail DDP's reduction at the next iteration, and a rank waiting on a
collective the other skips would hang (the timeout turns that into a failure).
Needs two GPUs; skipped otherwise (CI has none: run on the 2-GPU machine).
"""
import os
import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2,
                                                  reason='needs 2 GPUs')]
CONFIGS = {
    'detr': ['configs/detr/detr_r18_1xb8-demo.py'],
    'deformable-refine-twostage': ['configs/deformable_detr/deformable-detr_r18_1xb8-demo.py',
                                   'model.with_box_refine=True', 'model.as_two_stage=True'],
    'rtdetr': ['configs/rtdetr/rtdetr_r18vd_1xb8-demo.py'],
}
STANDIN = os.path.join('tools', 'misc', 'slurm_standin')


def empty_rank_dataset(tmp_path, demo_runs):
    data = tmp_path / 'data'
    coco = demo_runs.make_tiny_dataset(data, num_train=4, empty_images=(2, 4))
    assert {a['image_id'] for a in coco['annotations']} == {1, 3}  # rank 1 gets ids 2 and 4
    return data


def check_two_rank_run(proc, work_dir):
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert 'unused parameters' not in output.lower()
    assert 'Distributed training: True' in output
    assert 'Epoch(train) [1][2/2]' in output and 'Epoch(train) [1][3/' not in output
    assert (work_dir / 'epoch_1.pth').is_file()
    return output


@pytest.mark.parametrize('name', list(CONFIGS))
def test_dist_train_two_gpus_with_an_empty_rank(name, tmp_path, demo_runs):
    config, *options = CONFIGS[name]
    data = empty_rank_dataset(tmp_path, demo_runs)
    work_dir = tmp_path / 'work'
    command = ['bash', 'tools/dist_train.sh', config, '2', '--work-dir', str(work_dir),
               '--cfg-options', 'train_cfg.max_epochs=1', 'train_dataloader.sampler.shuffle=False',
               *options, *demo_runs.tiny_run_options(data, batch_size=1)]
    env = dict(demo_runs.tool_env(), PORT=str(demo_runs.free_port()))
    proc = subprocess.run(command, cwd=demo_runs.REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    check_two_rank_run(proc, work_dir)


def test_slurm_train_two_gpus_under_the_standin(tmp_path, demo_runs):
    config, *options = CONFIGS['rtdetr']
    data = empty_rank_dataset(tmp_path, demo_runs)
    work_dir = tmp_path / 'work'
    env = dict(demo_runs.tool_env(), GPUS='2', GPUS_PER_NODE='2', CPUS_PER_TASK='4',
               MASTER_PORT=str(demo_runs.free_port()), PYTHON=sys.executable,
               PATH=f"{demo_runs.REPO_ROOT / STANDIN}{os.pathsep}{os.environ['PATH']}")
    command = ['bash', 'tools/slurm_train.sh', 'dev', 'standin-job', config, str(work_dir),
               '--cfg-options', 'train_cfg.max_epochs=1', 'train_dataloader.sampler.shuffle=False',
               *options, *demo_runs.tiny_run_options(data, batch_size=1)]
    proc = subprocess.run(command, cwd=demo_runs.REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    output = check_two_rank_run(proc, work_dir)
    for rank in (0, 1):
        assert f'srun (stand-in): task {rank} exited with 0' in output
        assert f'[task {rank}]' in output
    print('\n'.join(line for line in output.splitlines()
                    if 'Epoch(train)' in line or 'stand-in' in line or 'Distributed' in line))
