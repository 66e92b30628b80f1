"""The benchmark scripts of tools/analysis on CPU: they run, print their table, and refuse what
cannot work with one clear line (the figures themselves come from GPU runs, docs/benchmarks.md)."""
import json
import os
import subprocess
import sys

import pytest

RTDETR_DEMO = 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py'


def run_tool(repo_root, *args):
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    return subprocess.run([sys.executable, *args], cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=300)


def test_benchmark_model_deploy_mode_on_cpu(repo_root):
    proc = run_tool(repo_root, 'tools/analysis/benchmark_model.py', RTDETR_DEMO, '--mode', 'deploy',
                    '--shape', '128', '128', '--batch', '2', '--iters', '2', '--warmup', '1',
                    '--device', 'cpu')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'deploy, batch 2, 128x128, fp32, fused' in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if line.startswith(f'| {RTDETR_DEMO}'))
    median_ms, _, images_per_s = (float(cell) for cell in row.split('|')[2:5])
    # images/s printed with one decimal
    assert median_ms > 0 and images_per_s == pytest.approx(2e3 / median_ms, rel=0.01, abs=0.06)


@pytest.mark.parametrize('args, message', [
    (['--mode', 'deploy', '--cuda-graph', '--device', 'cpu'], '--cuda-graph needs a CUDA device'),
    (['--mode', 'train', '--cuda-graph'], 'apply to --mode deploy'),
])
def test_benchmark_model_refuses_what_cannot_run(repo_root, args, message):
    proc = run_tool(repo_root, 'tools/analysis/benchmark_model.py', RTDETR_DEMO, *args)
    assert proc.returncode == 2
    assert message in proc.stderr and 'Traceback' not in proc.stderr


def test_ddp_scaling_epochs_and_arguments(load_tool, tmp_path, monkeypatch):
    tool = load_tool('tools/analysis/ddp_scaling.py')
    monkeypatch.setattr(sys, 'argv', ['ddp_scaling.py', RTDETR_DEMO, '--gpus', '3', '--batch', '8',
                                      '--work-dir', str(tmp_path)])
    with pytest.raises(SystemExit):  # 8 images cannot be split over 3 GPUs
        tool.parse_args()
    ann = tmp_path / 'annotations' / 'train.json'
    ann.parent.mkdir()
    ann.write_text(json.dumps(dict(images=[dict(id=i) for i in range(1, 401)], annotations=[],
                                   categories=[])))
    config = tmp_path / 'cfg.py'
    config.write_text(f"train_dataloader = dict(dataset=dict(data_root='{tmp_path}/', "
                      "ann_file='annotations/train.json'))\n")
    args = type('Args', (), dict(config=str(config), iters=50, cfg_options=[]))
    # 400 images: 25 iterations per epoch at a total batch of 16, so 2 epochs give 50
    assert tool.epochs_for(args, 16) == 2
    assert tool.epochs_for(args, 8) == 1
    assert tool.epochs_for(args, 32) == 5  # 12 per epoch (the last partial batch dropped)
    # the runs train on the data --cfg-options names: 40 images there, 5 iterations per epoch at 8
    other = tmp_path / 'other'
    (other / 'annotations').mkdir(parents=True)
    (other / 'annotations' / 'train.json').write_text(json.dumps(dict(
        images=[dict(id=i) for i in range(1, 41)], annotations=[], categories=[])))
    args.cfg_options = [f'train_dataloader.dataset.data_root={other}/']
    assert tool.epochs_for(args, 8) == 10
