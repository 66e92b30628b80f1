"""The Slurm stand-in used for the GPU launch test: one task per --ntasks with Slurm's variables,
output prefixed by rank, the first failure ends the step with its code."""
import os
import subprocess

STANDIN = os.path.join('tools', 'misc', 'slurm_standin')


def srun(repo_root, *args):
    env = dict(os.environ, PATH=f"{repo_root / STANDIN}{os.pathsep}{os.environ['PATH']}")
    env.pop('SLURM_NODELIST', None)
    return subprocess.run(['srun', *args], env=env, capture_output=True, text=True, timeout=60,
                          cwd=repo_root)


def test_tasks_get_slurm_variables(repo_root):
    proc = srun(repo_root, '-p', 'dev', '--job-name=j', '--gres=gpu:3', '--ntasks=3',
                '--ntasks-per-node=3', '--cpus-per-task=2', '--kill-on-bad-exit=1', 'bash', '-c',
                'echo "$SLURM_PROCID $SLURM_LOCALID $SLURM_NTASKS $(scontrol show hostname '
                '$SLURM_NODELIST)"')
    assert proc.returncode == 0, proc.stderr
    host = subprocess.run(['hostname'], capture_output=True, text=True).stdout.strip()
    assert sorted(proc.stdout.splitlines()) == [f'[task {r}] {r} {r} 3 {host}' for r in range(3)]
    assert all(f'task {r} exited with 0' in proc.stderr for r in range(3))


def test_first_failure_stops_the_others(repo_root):
    proc = srun(repo_root, '--ntasks', '2', 'bash', '-c',
                '[ "$SLURM_PROCID" = 1 ] && exit 7; sleep 30')
    assert proc.returncode == 7
    assert 'task 1 exited with 7' in proc.stderr
    assert 'task 0 exited with 143' in proc.stderr  # SIGTERM, well before its 30 s sleep
