"""2-process DDP training on CPU (torchrun, gloo) with tools/train.py --launcher pytorch.

Rank 1's batches hold only images without boxes (4 images, batch 1 per rank, unshuffled sampler:
rank r gets images r and r + 2), so a parameter that only a matched box reaches would be left
without gradient there; DDP (find_unused_parameters=False) then fails at the next iteration's
reduction. Two iterations per rank make that check happen.
"""
import re
import subprocess
import sys

import pytest

DETR_DEMO = 'configs/detr/detr_r18_1xb8-demo.py'
RTDETR_DEMO = 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py'
# D-FINE: only a matched box reaches the FDR branches, the pre-box head and the LQE
DFINE_DEMO = 'configs/dfine/dfine_r18vd_1xb8-demo.py'
LOGGED_LOSS = {DETR_DEMO: 'loss_cls', RTDETR_DEMO: 'loss_cls', DFINE_DEMO: 'loss_fgl'}


@pytest.mark.parametrize('config', [DETR_DEMO, RTDETR_DEMO, DFINE_DEMO])
def test_two_rank_cpu_ddp_with_an_empty_rank(config, tmp_path, demo_runs):
    data = tmp_path / 'data'
    coco = demo_runs.make_tiny_dataset(data, num_train=4, empty_images=(2, 4))
    # ids 1..4 in sampler order: rank 0 gets ids 1 and 3 (boxes), rank 1 ids 2 and 4 (none).
    assert [im['id'] for im in coco['images']] == [1, 2, 3, 4]
    boxed = {a['image_id'] for a in coco['annotations']}
    assert boxed == {1, 3}

    work_dir = tmp_path / 'work'
    launcher = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                '--master_addr', '127.0.0.1', '--master_port', str(demo_runs.free_port())]
    script_and_args = demo_runs.train_command(config, '--launcher', 'pytorch',
                                              '--work-dir', str(work_dir))[1:]
    command = launcher + script_and_args
    command += ['--cfg-options', 'env_cfg.dist_cfg.backend=gloo', 'train_cfg.max_epochs=1',
                'train_dataloader.sampler.shuffle=False',
                *demo_runs.tiny_run_options(data, batch_size=1)]
    proc = subprocess.run(command, cwd=demo_runs.REPO_ROOT, env=demo_runs.tool_env(),
                          capture_output=True, text=True, timeout=150)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert 'unused parameters' not in output.lower()
    assert 'Distributed training: True' in output
    assert 'CPUAffinityHook: ' in output   # the default runtime's binding ran in the DDP job
    # 4 images over 2 ranks at batch 1: 2 iterations per epoch (a single process would take 4).
    assert 'Epoch(train) [1][2/2]' in output, output[-3000:]
    assert 'Epoch(train) [1][3/' not in output
    assert LOGGED_LOSS[config] in output and not re.search(r'\bnan\b', output.lower())
    assert (work_dir / 'epoch_1.pth').is_file()
