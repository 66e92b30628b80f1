"""A crash in the middle of writing a checkpoint leaves the previous one usable for --resume.

The process dies (``os._exit``, no clean-up) after writing half of ``epoch_2.pth``, with
``max_keep_ckpts=1`` as in the demo configs. mmengine's CheckpointHook would already have deleted
``epoch_1.pth`` (it prunes before saving) and left ``last_checkpoint`` naming it; the default
runtime's SafeCheckpointHook prunes after the save, so ``epoch_1.pth`` must be intact, named by
``last_checkpoint``, and a resumed run must finish and only then drop it.
"""
import subprocess
import sys

import torch

DETR_DEMO = 'configs/detr/detr_r18_1xb8-demo.py'

# Runs tools/train.py with the local file backend's put() dying halfway through epoch_2.pth.
CRASHING_TRAIN = '''
import os, runpy, sys
from mmengine.fileio.backends import LocalBackend

def put_then_die(self, obj, filepath, _put=LocalBackend.put):
    if str(filepath).endswith('epoch_2.pth'):
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
        os._exit(3)
    _put(self, obj, filepath)

LocalBackend.put = put_then_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def test_crash_while_saving_keeps_previous_checkpoint(tmp_path, demo_runs):
    data = tmp_path / 'data'
    demo_runs.make_tiny_dataset(data, num_train=2)
    work = tmp_path / 'work'
    options = ['--cfg-options', 'train_cfg.max_epochs=2', 'default_hooks.checkpoint.interval=1',
               'default_hooks.checkpoint.max_keep_ckpts=1',
               *demo_runs.tiny_run_options(data, batch_size=2)]
    run = dict(cwd=demo_runs.REPO_ROOT, env=demo_runs.tool_env(), capture_output=True, text=True,
               timeout=200)
    wrapper = tmp_path / 'crashing_train.py'
    wrapper.write_text(CRASHING_TRAIN)

    crashed = subprocess.run([sys.executable, str(wrapper),
                              *demo_runs.train_command(DETR_DEMO, '--work-dir', str(work),
                                                       *options)[1:]], **run)
    assert crashed.returncode == 3, crashed.stdout[-3000:] + crashed.stderr[-3000:]
    half_written = work / 'epoch_2.pth'
    assert half_written.is_file()
    assert (work / 'last_checkpoint').read_text().strip() == str(work / 'epoch_1.pth')
    previous = torch.load(work / 'epoch_1.pth', map_location='cpu', weights_only=False)
    assert previous['meta']['epoch'] == 1

    resumed = subprocess.run(demo_runs.train_command(DETR_DEMO, '--work-dir', str(work),
                                                     '--resume', *options), **run)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert 'resumed epoch: 1, iter: 1' in log
    assert torch.load(half_written, map_location='cpu', weights_only=False)['meta']['epoch'] == 2
    assert not (work / 'epoch_1.pth').exists()   # max_keep_ckpts=1, after a complete save
