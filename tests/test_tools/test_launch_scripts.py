"""tools/{dist,slurm}_{train,test}.sh: the torchrun / srun command lines they build.

A fake ``torchrun`` / ``srun`` first on PATH records its argv; nothing is launched.
"""
import os
import subprocess

import pytest

FAKE_LAUNCHER = '''#!/usr/bin/env bash
printf '%s\\0' "$@" > "$RECORD"
printf '%s' "$PYTHONPATH" > "$RECORD.pythonpath"
'''


@pytest.fixture
def launch(tmp_path, repo_root):
    """Runs a script of tools/ with fake launchers; returns (returncode, argv, PYTHONPATH, stderr)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for name in ('torchrun', 'srun'):
        (bin_dir / name).write_text(FAKE_LAUNCHER)
        (bin_dir / name).chmod(0o755)
    record = tmp_path / 'argv'

    def run(script, *args, **env):
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ('NNODES', 'NODE_RANK', 'MASTER_ADDR', 'PORT', 'GPUS',
                                 'GPUS_PER_NODE', 'CPUS_PER_TASK', 'SRUN_ARGS', 'PYTHON',
                                 'PYTHONPATH')}
        full_env.update(env, PATH=f'{bin_dir}:{os.environ["PATH"]}', RECORD=str(record))
        proc = subprocess.run(['bash', str(repo_root / 'tools' / script), *args], env=full_env,
                              capture_output=True, text=True, timeout=60)
        if not record.exists():
            return proc.returncode, None, None, proc.stderr
        argv = record.read_text().split('\0')[:-1]
        return proc.returncode, argv, (tmp_path / 'argv.pythonpath').read_text(), proc.stderr
    return run


def test_dist_train_defaults(launch, repo_root):
    rc, argv, pythonpath, _ = launch('dist_train.sh', 'cfg.py', '4')
    assert rc == 0
    assert argv == ['--nnodes=1', '--node_rank=0', '--master_addr=127.0.0.1', '--master_port=29500',
                    '--nproc_per_node=4', f'{repo_root}/tools/train.py', 'cfg.py',
                    '--launcher', 'pytorch']
    assert pythonpath == str(repo_root)


def test_dist_train_multi_node_and_passthrough(launch, repo_root):
    rc, argv, pythonpath, _ = launch(
        'dist_train.sh', 'cfg.py', '8', '--amp', '--cfg-options', 'work_dir=a b',
        NNODES='2', NODE_RANK='1', MASTER_ADDR='10.1.2.3', PORT='12345', PYTHONPATH='/x')
    assert rc == 0
    assert argv == ['--nnodes=2', '--node_rank=1', '--master_addr=10.1.2.3', '--master_port=12345',
                    '--nproc_per_node=8', f'{repo_root}/tools/train.py', 'cfg.py',
                    '--launcher', 'pytorch', '--amp', '--cfg-options', 'work_dir=a b']
    assert pythonpath == f'{repo_root}:/x'


def test_dist_test(launch, repo_root):
    rc, argv, _, _ = launch('dist_test.sh', 'cfg.py', 'w/epoch_1.pth', '2', '--out', 'r.pkl',
                            PORT='29600')
    assert rc == 0
    assert argv == ['--nnodes=1', '--node_rank=0', '--master_addr=127.0.0.1', '--master_port=29600',
                    '--nproc_per_node=2', f'{repo_root}/tools/test.py', 'cfg.py', 'w/epoch_1.pth',
                    '--launcher', 'pytorch', '--out', 'r.pkl']


def test_slurm_train_with_environment(launch, repo_root):
    rc, argv, pythonpath, _ = launch(
        'slurm_train.sh', 'gpu_part', 'detr', 'cfg.py', 'work_dirs/x', '--amp',
        GPUS='16', GPUS_PER_NODE='8', CPUS_PER_TASK='4', SRUN_ARGS='--time=1:00:00  --qos=high',
        PYTHON='/opt/py/bin/python')
    assert rc == 0
    assert argv == ['-p', 'gpu_part', '--job-name=detr', '--gres=gpu:8', '--ntasks=16',
                    '--ntasks-per-node=8', '--cpus-per-task=4', '--kill-on-bad-exit=1',
                    '--time=1:00:00', '--qos=high', '/opt/py/bin/python', '-u',
                    f'{repo_root}/tools/train.py', 'cfg.py', '--work-dir=work_dirs/x',
                    '--launcher=slurm', '--amp']
    assert pythonpath == str(repo_root)


def test_slurm_train_defaults_fit_fewer_than_eight_gpus(launch, repo_root):
    rc, argv, _, _ = launch('slurm_train.sh', 'p', 'j', 'cfg.py', 'wd', GPUS='2')
    assert rc == 0
    assert argv == ['-p', 'p', '--job-name=j', '--gres=gpu:2', '--ntasks=2', '--ntasks-per-node=2',
                    '--cpus-per-task=5', '--kill-on-bad-exit=1', 'python', '-u',
                    f'{repo_root}/tools/train.py', 'cfg.py', '--work-dir=wd', '--launcher=slurm']


def test_slurm_test(launch, repo_root):
    rc, argv, _, _ = launch('slurm_test.sh', 'p', 'j', 'cfg.py', 'c.pth', '--out', 'r.pkl')
    assert rc == 0
    assert argv == ['-p', 'p', '--job-name=j', '--gres=gpu:8', '--ntasks=8', '--ntasks-per-node=8',
                    '--cpus-per-task=5', '--kill-on-bad-exit=1', 'python', '-u',
                    f'{repo_root}/tools/test.py', 'cfg.py', 'c.pth', '--launcher=slurm',
                    '--out', 'r.pkl']


@pytest.mark.parametrize('script, args', [
    ('dist_train.sh', ['cfg.py']),
    ('dist_test.sh', ['cfg.py', 'c.pth']),
    ('slurm_train.sh', ['p', 'j', 'cfg.py']),
    ('slurm_test.sh', ['p', 'j', 'cfg.py']),
])
def test_missing_arguments_print_usage(launch, script, args):
    rc, argv, _, stderr = launch(script, *args)
    assert rc == 2 and argv is None and 'usage:' in stderr
