"""tools/train.py then tools/test.py on the demo config, on a few generated images (CPU).

Checks the mechanics a user relies on: a checkpoint and ``last_checkpoint`` in the work dir,
the checkpoint loading back into tools/test.py and into mmdet's own ``init_detector`` with
weights-only loading (torch >= 2.6's default, no environment variable), predictions dumped by
--out, the untrained-baseline warning, and the ``Final metrics`` line with COCO bbox keys.
"""
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

DEMO_CONFIG = 'configs/detr/detr_r18_1xb8-demo.py'


def small_run_options(demo_runs, data_root):
    """--cfg-options for a fast run: tiny data, no workers, one epoch without validation."""
    return ['train_cfg.max_epochs=1', *demo_runs.tiny_run_options(data_root, batch_size=4)]


def run_tool(repo_root, script, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith('TORCH_FORCE')}
    env.update(PYTHONPATH=str(repo_root), TORCH_FORCE_WEIGHTS_ONLY_LOAD='1')
    proc = subprocess.run([sys.executable, str(repo_root / 'tools' / script), *args], cwd=repo_root,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def final_metrics(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith('Final metrics: ')]
    assert len(lines) == 1, stdout[-2000:]
    return json.loads(lines[0][len('Final metrics: '):])


def test_train_then_test(tmp_path, repo_root, load_tool, demo_runs):
    if not (repo_root / DEMO_CONFIG).exists():
        pytest.fail(f'{DEMO_CONFIG} is missing')
    data = tmp_path / 'data'
    load_tool('tools/misc/make_demo_dataset.py').make_demo_dataset(
        str(data), seed=1, num_train=4, num_val=2)
    options = small_run_options(demo_runs, data)
    work_dir = tmp_path / 'work'

    run_tool(repo_root, 'train.py', DEMO_CONFIG, '--work-dir', str(work_dir), '--cfg-options', *options)
    checkpoint = (work_dir / 'last_checkpoint').read_text().strip()
    assert checkpoint == str(work_dir / 'epoch_1.pth') and os.path.isfile(checkpoint)

    out = tmp_path / 'predictions.pkl'
    trained = run_tool(repo_root, 'test.py', DEMO_CONFIG, checkpoint, '--work-dir',
                       str(tmp_path / 'eval'), '--out', str(out), '--cfg-options', *options)
    metrics = final_metrics(trained.stdout)
    assert {'coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75'} <= set(metrics)
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0
    with open(out, 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == 2 and 'pred_instances' in predictions[0]
    assert 'UNTRAINED' not in trained.stderr

    # mmdet's own loader (torch.load without weights_only): our checkpoint holds only what the
    # weights-only unpickler accepts once detr_plugin is imported
    from mmdet.apis import init_detector
    saved = torch.load(checkpoint, map_location='cpu', weights_only=True)
    with pytest.MonkeyPatch.context() as env:
        env.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
        env.setenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '1')
        model = init_detector(str(repo_root / DEMO_CONFIG), checkpoint, device='cpu')
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved['state_dict'][key]), key
    assert model.dataset_meta['classes'] == saved['meta']['dataset_meta']['classes']


def test_untrained_baseline_in_process(tmp_path, repo_root, load_tool, capsys, monkeypatch,
                                       demo_runs):
    """test.py without a checkpoint: warns, and prints the metrics of the seeded initial model."""
    # main() sets it with setdefault; pinned here so that it does not outlive the test.
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.chdir(repo_root)
    data = tmp_path / 'data'
    load_tool('tools/misc/make_demo_dataset.py').make_demo_dataset(
        str(data), seed=1, num_train=1, num_val=2)
    test_tool = load_tool('tools/test.py')
    with pytest.warns(UserWarning, match='no checkpoint given: evaluating the UNTRAINED model'):
        returned = test_tool.main([DEMO_CONFIG, '--work-dir', str(tmp_path / 'eval0'),
                                   '--cfg-options', *small_run_options(demo_runs, data)])
    printed = final_metrics(capsys.readouterr().out)
    assert printed == returned and 'coco/bbox_mAP' in printed
