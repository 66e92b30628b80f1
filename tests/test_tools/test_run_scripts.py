"""tools/run_tests.sh, .ci/run and tools/run_demo.sh: the steps they run and their exit codes.

Each runs in a copy of its layout where tools/setup_env.sh, the CUDA build script and the
environment's python are fakes that log their calls, so only the orchestration is tested.
"""
import os
import shutil
import subprocess
import sys

import pytest

FAKE_SETUP = '''#!/usr/bin/env bash
echo "setup_env: installing nothing"
[ "${FAKE_SETUP_RC:-0}" = 0 ] || exit "$FAKE_SETUP_RC"
echo "$FAKE_PYTHON"
'''
FAKE_CUDA_BUILD = '''#!/usr/bin/env bash
echo "build_cuda_ext" >> "$LOG"
exit "${FAKE_CUDA_RC:-0}"
'''
# Plays the environment's python: pytest, the dataset writer, train.py and test.py.
FAKE_PYTHON = '''#!/usr/bin/env bash
[ "$1" = -c ] && exec "$REAL_PYTHON" "$@"
echo "python $*" >> "$LOG"
case "$1" in
  -m) exit "${FAKE_PYTEST_RC:-0}" ;;
  tools/misc/make_demo_dataset.py)
    mkdir -p data/demo/annotations
    touch data/demo/annotations/instances_train.json data/demo/annotations/instances_val.json ;;
  tools/train.py)
    [ "${FAKE_TRAIN_RC:-0}" = 0 ] || exit "$FAKE_TRAIN_RC"
    touch "$4/epoch_2.pth"
    printf '%s' "$4/epoch_2.pth" > "$4/last_checkpoint" ;;
  tools/test.py)
    echo "some log line"
    if [ "$3" = --work-dir ]; then
      echo 'Final metrics: {"coco/bbox_mAP": 0.0012, "coco/bbox_mAP_50": 0.004}'
    else
      echo 'Final metrics: {"coco/bbox_mAP": 0.4567, "coco/bbox_mAP_50": 0.8}'
    fi ;;
esac
'''


def _executable(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def fake_repo(tmp_path, repo_root):
    """A copy of the scripts under test, with fake dependencies; returns a runner of its scripts."""
    root = tmp_path / 'repo'
    for script in ('tools/run_tests.sh', 'tools/run_demo.sh', '.ci/run'):
        (root / script).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo_root / script, root / script)
    _executable(root / 'tools/setup_env.sh', FAKE_SETUP)
    _executable(root / 'tools/ci/build_cuda_ext.sh', FAKE_CUDA_BUILD)
    _executable(tmp_path / 'fake_python', FAKE_PYTHON)
    (root / 'configs/rtdetr').mkdir(parents=True)
    (root / 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py').write_text('')
    log = tmp_path / 'log'

    def run(script, *args, **env):
        full_env = {k: v for k, v in os.environ.items() if k not in ('SKIP_CUDA_BUILD', 'DEMO_CONFIG')}
        full_env.update(env, FAKE_PYTHON=str(tmp_path / 'fake_python'), REAL_PYTHON=sys.executable,
                        LOG=str(log))
        proc = subprocess.run(['bash', str(root / script), *args], env=full_env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return proc, calls
    run.root = root
    return run


def test_run_tests_builds_then_runs_pytest_with_extra_args(fake_repo):
    proc, calls = fake_repo('tools/run_tests.sh', '-k', 'demo', '-x')
    assert proc.returncode == 0, proc.stderr
    assert calls == ['build_cuda_ext', 'python -m pytest tests -q -k demo -x']


@pytest.mark.parametrize('pytest_rc', [1, 2, 5])
def test_run_tests_fails_when_pytest_fails_or_finds_nothing(fake_repo, pytest_rc):
    proc, _ = fake_repo('tools/run_tests.sh', FAKE_PYTEST_RC=str(pytest_rc))
    assert proc.returncode == pytest_rc
    assert ('collected no tests' in proc.stderr) == (pytest_rc == 5)


def test_run_tests_stops_on_cuda_build_or_setup_failure(fake_repo):
    proc, calls = fake_repo('tools/run_tests.sh', FAKE_CUDA_RC='3')
    assert proc.returncode == 3 and calls == ['build_cuda_ext']
    proc, calls = fake_repo('tools/run_tests.sh', FAKE_SETUP_RC='4')
    assert proc.returncode == 4 and calls == []


def test_run_tests_skips_cuda_build_on_request_or_without_the_script(fake_repo):
    proc, calls = fake_repo('tools/run_tests.sh', SKIP_CUDA_BUILD='1')
    assert proc.returncode == 0 and calls == ['python -m pytest tests -q']
    (fake_repo.root / 'tools/ci/build_cuda_ext.sh').unlink()
    proc, calls = fake_repo('tools/run_tests.sh')
    assert proc.returncode == 0 and calls == ['python -m pytest tests -q']


def test_ci_entry_point_runs_the_test_script(fake_repo):
    proc, calls = fake_repo('.ci/run')
    assert proc.returncode == 0 and calls == ['build_cuda_ext', 'python -m pytest tests -q']
    proc, _ = fake_repo('.ci/run', FAKE_PYTEST_RC='1')
    assert proc.returncode == 1


def test_run_demo_steps_and_summary(fake_repo):
    config = 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py'
    proc, calls = fake_repo('tools/run_demo.sh', '--cfg-options', 'train_cfg.max_epochs=1')
    assert proc.returncode == 0, proc.stderr
    work_dirs = list((fake_repo.root / 'work_dirs/demo').iterdir())
    assert len(work_dirs) == 1
    wd = f'work_dirs/demo/{work_dirs[0].name}'
    assert calls == [
        'python tools/misc/make_demo_dataset.py --out data/demo',
        f'python tools/test.py {config} --work-dir {wd}/eval_untrained',
        f'python tools/train.py {config} --work-dir {wd} --cfg-options train_cfg.max_epochs=1',
        f'python tools/test.py {config} {wd}/epoch_2.pth --work-dir {wd}/eval_trained',
    ]
    assert 'untrained bbox mAP: 0.001 / trained bbox mAP: 0.457' in proc.stdout
    assert 'wall times:' in proc.stdout


def test_run_demo_rerun_reuses_data_and_trains_into_a_new_dir(fake_repo):
    fake_repo('tools/run_demo.sh')
    other = fake_repo.root / 'configs/other.py'
    other.write_text('')
    proc, calls = fake_repo('tools/run_demo.sh', DEMO_CONFIG='configs/other.py')
    assert proc.returncode == 0, proc.stderr
    assert len(list((fake_repo.root / 'work_dirs/demo').iterdir())) == 2
    assert not any('make_demo_dataset' in call for call in calls)
    assert [call.split()[2] for call in calls] == ['configs/other.py'] * 3


def test_run_demo_fails_without_summary_when_training_fails(fake_repo):
    proc, calls = fake_repo('tools/run_demo.sh', FAKE_TRAIN_RC='1')
    assert proc.returncode != 0
    assert 'trained bbox mAP' not in proc.stdout
    assert not any('epoch_2.pth' in call for call in calls)


def test_run_demo_needs_its_config(fake_repo):
    proc, calls = fake_repo('tools/run_demo.sh', DEMO_CONFIG='configs/missing.py')
    assert proc.returncode != 0 and 'configs/missing.py not found' in proc.stderr and calls == []
