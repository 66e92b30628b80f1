"""The benchmark scripts of tools/analysis on CPU: they run, print their table, and refuse what
cannot work with one clear line (the figures themselves come from GPU runs, docs/benchmarks.md)."""
import json
import os
import subprocess
import sys

import pytest
import torch

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


def test_step_breakdown_phases_by_hand(load_tool):
    tool = load_tool('tools/analysis/step_breakdown.py')
    # host seconds at each mark of three iterations; no CUDA events on CPU
    times = [(1.0, 1.5, 2.0, 2.5, 2.75), (4.25, 4.5, 5.5, 5.75, 6.0), (7.0, 8.0, 8.25, 9.0, 9.5)]
    iters, previous = [], None
    for marks in times:
        it = {'previous_end': previous, 'sizes': [(64, 96)]}
        it.update({name: (t, None) for name, t in zip(tool.MARKS, marks)})
        iters.append(it)
        previous = it['after_iter']
    report = tool.phase_medians(iters)
    # forward = backward_start - before_iter: 0.5, 0.25, 1.0 s; data = before_iter - previous end
    assert report['host']['forward'] == 500.0
    assert report['host']['backward'] == 500.0      # 0.5, 1.0, 0.25
    assert report['host']['step'] == 500.0          # 0.5, 0.25, 0.75
    assert report['host']['rest'] == 250.0          # 0.25, 0.25, 0.5
    assert report['host']['data'] == 1250.0         # 1.5, 1.0 (the first has no previous end)
    assert report['host']['iteration'] == 3375.0    # 3.25, 3.5
    assert report['gpu']['forward'] is None and report['image_sizes'] == [(64, 96)]
    with pytest.raises(RuntimeError, match='no complete iteration'):
        tool.phase_medians([{'previous_end': None, 'sizes': [], 'before_iter': (0.0, None)}])


def test_step_breakdown_runs_a_fixed_size_training(repo_root, tmp_path, demo_runs):
    data = tmp_path / 'data'
    demo_runs.make_tiny_dataset(data, num_train=8)
    proc = run_tool(repo_root, 'tools/analysis/step_breakdown.py',
                    'configs/detr/detr_r18_1xb8-demo.py', '--work-dir', str(tmp_path),
                    '--iters', '4', '--skip', '1', '--profile', '1', '--sync-debug', '1',
                    '--fixed-size', '64', '96',
                    '--cfg-options', *demo_runs.tiny_run_options(data, batch_size=2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'median ms per phase over 3 iterations' in proc.stdout
    assert 'image sizes (h x w, before batching): 64x96' in proc.stdout
    report, = json.loads((tmp_path / 'step_breakdown.json').read_text())
    host = report['host']
    assert all(host[p] > 0 for p in ('forward', 'backward', 'step', 'iteration'))
    assert host['forward'] + host['backward'] < host['iteration'] * 1.5
    assert 'aten::' in (tmp_path / 'profile_rank0.txt').read_text()
    # no GPU here, so no waits for one; the call sites are tested below
    assert (tmp_path / 'sync_points_rank0.txt').read_text().startswith('# rank 0, iteration 1: 0 ')


def test_step_breakdown_sync_recorder_names_the_call_site(load_tool):
    tool = load_tool('tools/analysis/step_breakdown.py')

    def wait_for_the_gpu(recorder):
        recorder.record(UserWarning('called a synchronizing CUDA operation'), UserWarning, 'f', 1)

    recorder = tool.SyncRecorder()
    for _ in range(3):
        wait_for_the_gpu(recorder)
    recorder.record(UserWarning('something else'), UserWarning, 'f', 1)
    (site, count), = recorder.sites.items()
    assert count == 3 and site.startswith('tests/test_tools/test_benchmark_tools.py:')
    assert 'wait_for_the_gpu <- ' in site


def test_benchmark_rtdetr_models_per_version(load_tool, repo_root, monkeypatch, capsys):
    tool = load_tool('tools/analysis/benchmark_rtdetr.py')
    prefixes = dict(v1=('configs/rtdetr/rtdetr_r', 'rtdetr_r'),
                    v2=('configs/rtdetrv2/rtdetrv2_r', 'rtdetrv2_r'),
                    dfine=('configs/dfine/dfine_hgnetv2-', 'dfine_hgnetv2_'),
                    deim=('configs/deim/deim_dfine_hgnetv2-', 'deim_hgnetv2_'))
    assert set(tool.FAMILIES) == set(prefixes)
    for version, (our_prefix, their_prefix) in prefixes.items():
        for name, (ours, theirs) in tool.FAMILIES[version].models.items():
            assert ours.startswith(our_prefix) and (repo_root / ours).is_file(), ours
            assert theirs.startswith(their_prefix) and theirs.endswith('_coco.yml')
            if version in ('dfine', 'deim'):  # the size letter in both names
                assert ours.startswith(f'{our_prefix}{name}_')
                assert theirs == f'{their_prefix}{name}_coco.yml'
    root = ['--rtdetr-root', '/nowhere']
    monkeypatch.setattr(sys, 'argv', ['benchmark_rtdetr.py', '--version', 'v2', *root])
    assert tool.parse_args().models == ['r18', 'r50']
    monkeypatch.setattr(sys, 'argv', ['benchmark_rtdetr.py', '--version', 'dfine', *root])
    assert tool.parse_args().models == ['s', 'l']
    # RT-DETRv2-M exists in v2 only: refused in one line for v1
    monkeypatch.setattr(sys, 'argv', ['benchmark_rtdetr.py', *root, '--models', 'r18', 'r50m'])
    with pytest.raises(SystemExit) as exit_info:
        tool.parse_args()
    assert exit_info.value.code == 2
    assert ('--models r50m: not a v1 model (choose from r18 r34 r50 r101)'
            in capsys.readouterr().err)
    monkeypatch.setattr(sys, 'argv', ['benchmark_rtdetr.py', *root, '--size', '100'])
    with pytest.raises(SystemExit):
        tool.parse_args()
    assert '--size 100: not a multiple of 32' in capsys.readouterr().err


def test_benchmark_rtdetr_resident_bytes_by_hand(load_tool):
    tool = load_tool('tools/analysis/benchmark_rtdetr.py')
    layer = torch.nn.Linear(3, 2)  # 6 + 2 float32 parameters
    layer.register_buffer('table', torch.zeros(5, dtype=torch.float64))
    optimizer = torch.optim.AdamW(layer.parameters())
    assert tool.resident_bytes([layer], optimizer) == 8 * 4 + 5 * 8
    layer(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    # + gradients (8 floats), exp_avg and exp_avg_sq (8 floats each), a float32 step per tensor
    assert tool.resident_bytes([layer], optimizer) == 8 * 4 + 5 * 8 + 3 * 8 * 4 + 2 * 4
    shared = torch.nn.Sequential(layer, layer)  # a tensor held twice is counted once
    assert tool.resident_bytes([shared, layer], optimizer) == 8 * 4 + 5 * 8 + 3 * 8 * 4 + 2 * 4


@pytest.mark.gpu
def test_benchmark_rtdetr_peak_memory_of_a_known_step(load_tool):
    tool = load_tool('tools/analysis/benchmark_rtdetr.py')
    layer = torch.nn.Linear(1024, 1024, bias=False).cuda()  # 4 MiB
    optimizer = torch.optim.SGD(layer.parameters())
    other = torch.empty(64, 2**20, device='cuda')  # 256 MiB of another model: not counted

    def step():
        scratch = torch.ones(16, 2**20, device='cuda')  # 64 MiB at once, then freed
        return float(scratch.sum())
    assert tool.peak_mib(step, [layer], optimizer, 'cuda') == pytest.approx(4 + 64, abs=0.01)
    del other


def table_row(stdout: str, first_cells: str):
    line = next(line for line in stdout.splitlines() if line.startswith(first_cells))
    return [cell.strip() for cell in line.strip('|').split('|')]


def test_benchmark_rtdetr_dfine_next_to_the_original_on_cpu(load_tool, original_checkout,
                                                           monkeypatch, capsys):
    root = original_checkout('dfine')
    tool = load_tool('tools/analysis/benchmark_rtdetr.py')
    monkeypatch.setattr(sys, 'path', list(sys.path))
    modules, threads = set(sys.modules), torch.get_num_threads()
    torch.set_num_threads(1)  # the machine's cores are shared: one thread is the fastest here
    args = ['benchmark_rtdetr.py', '--version', 'dfine', '--root', str(root), '--models', 's',
            '--size', '128', '--batch', '2', '--dtype', 'fp32', '--boxes', '3', '--iters', '1',
            '--warmup', '0', '--rounds', '1', '--device', 'cpu']
    try:
        monkeypatch.setattr(sys, 'argv', args)
        tool.main()
        infer = capsys.readouterr().out
        monkeypatch.setattr(sys, 'argv', args + ['--mode', 'train'])
        tool.main()
        train = capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
        for name in set(sys.modules) - modules:  # the original's packages, named src.*
            if name.split('.')[0] == 'src':
                del sys.modules[name]
    assert 'D-FINE infer, 128x128, cpu' in infer
    *_, their_ms, their_graph, our_ms, our_graph, _, _, score_diff = table_row(infer, '| s | 2 |')
    assert float(their_ms) > 0 and float(our_ms) > 0 and their_graph == our_graph == 'n/a'
    # the original's deploy form and ours on the same converted weights: the same top-300 scores
    assert float(score_diff) < 1e-4
    assert 'D-FINE train, 128x128, cpu' in train
    cells = table_row(train, '| s | 2 | fp32 |')
    their_ms, our_ms, their_rate, our_rate = (float(c) for c in cells[3:7])
    assert their_rate == pytest.approx(2e3 / their_ms, abs=0.06)
    assert our_rate == pytest.approx(2e3 / our_ms, abs=0.06)
    assert cells[8:] == ['n/a', 'n/a']  # peak memory: GPU only
