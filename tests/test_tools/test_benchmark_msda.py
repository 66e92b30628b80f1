"""tools/analysis/benchmark_msda.py on the CPU (the GPU figures come from GPU runs,
docs/benchmarks.md): the op and module tables of the tiny case, and the module comparison's
premise, that ours and mmcv's MultiScaleDeformableAttention with the same weights agree."""
import inspect
import os
import re
import subprocess
import sys

from detr_plugin.ops import multi_scale_deformable_attention


def test_benchmark_msda_cpu_smoke_run(repo_root, tmp_path):
    out = tmp_path / 'msda.md'
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    proc = subprocess.run(
        [sys.executable, 'tools/analysis/benchmark_msda.py', '--device', 'cpu', '--cases', 'tiny',
         '--module-cases', 'tiny', '--locations', 'realistic', '--reps', '1', '--warmup', '0',
         '--out', str(out)], cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    rows = {tuple(cell.strip() for cell in line.split('|')[1:3])
            for line in text.splitlines() if line.startswith('| ')}
    expected = {('ours', 'fp32'), ('ours', 'bf16'), ('grid_sample', 'fp32'),
                ('mmcv', 'fp32'), ('mmcv', 'bf16 autocast'), ('ours', 'bf16 autocast')}
    if 'deterministic' in inspect.signature(multi_scale_deformable_attention).parameters:
        expected |= {('ours_det', 'fp32'), ('ours_det', 'bf16')}
    assert expected <= rows, sorted(rows)
    assert "mmcv not timed: its op's backward is CUDA only" in proc.stderr
    # mmcv's module is the reference: same weights, so the outputs agree (ours + the residual)
    diffs = dict(re.findall(r'mmcv / ours, (\w+) .*output relative difference (\S+)', text))
    assert float(diffs['fp32']) < 1e-5 and float(diffs['amp']) < 2e-2, diffs
    assert '### Summary: op, forward+backward' in text
    assert '### Summary: module, forward+backward' in text
