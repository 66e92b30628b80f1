"""``pip install .`` (not editable) into a fresh directory, then training from a config outside the
clone that inherits the installed package's configs (``detr_plugin::``), with its shipped
tools/train.py. The environment's torch and mm stack are reused (PYTHONPATH puts the fresh copy
first); the declared requirements are checked against them. About 30 s of CPU (pip 5 s,
training 2 iterations and validating 2 images 15 s, interpreter start-ups); 70 s wall on 2 shared cores."""
import os
import shutil
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

USER_CONFIG = '''
_base_ = 'detr_plugin::rtdetr/rtdetr_r18vd_1xb8-demo.py'

data_root = '{data}/'
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1, val_interval=1)
'''

# run in the user's directory: where detr_plugin comes from, whether the declared requirements
# hold in this environment, then the installed tools/train.py
RUN = '''
import runpy, sys
from importlib import metadata
from packaging.requirements import Requirement
import detr_plugin
print('package', detr_plugin.__file__, detr_plugin.__version__)
requirements = [Requirement(r) for r in metadata.requires('detr_plugin')]
unmet = [str(r) for r in requirements if r.marker is None
         and not r.specifier.contains(metadata.version(r.name), prereleases=True)]
print('requires', sorted(r.name for r in requirements if r.marker is None), 'unmet', unmet)
train = detr_plugin.__path__[0] + '/.mim/tools/train.py'
sys.argv = [train, 'my_config.py', '--work-dir', 'work']
runpy.run_path(train, run_name='__main__')
'''


def copy_source(target: str) -> None:
    shutil.copytree(REPO, target, ignore=shutil.ignore_patterns(
        '.git', '.venv*', '.device', 'data', 'work_dirs', 'build', '*.egg-info', '__pycache__',
        '.pytest_cache', '.mim'))


def test_pip_install_then_train_from_shipped_base(tmp_path, demo_runs):
    source, site, user = tmp_path / 'source', tmp_path / 'site', tmp_path / 'user'
    copy_source(str(source))
    install = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-build-isolation', '--no-index',
         '--disable-pip-version-check', '-q', '--target', str(site), str(source)],
        capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (site / 'detr_plugin' / '.mim' / 'configs' / '_base_' / 'default_runtime.py').is_file()
    assert (site / 'detr_plugin' / '.mim' / 'tools' / 'train.py').is_file()

    user.mkdir()
    data = user / 'data'
    demo_runs.load_make_demo_dataset().make_demo_dataset(str(data), seed=0, num_train=4, num_val=2)
    (user / 'my_config.py').write_text(USER_CONFIG.format(data=data))
    env = dict(os.environ, PYTHONPATH=str(site))
    run = subprocess.run([sys.executable, '-c', textwrap.dedent(RUN)], cwd=user, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert f'package {site}/detr_plugin/__init__.py' in run.stdout
    assert ("requires ['mmcv', 'mmdet', 'mmengine', 'numpy', 'pycocotools', 'scipy', 'torch'] "
            'unmet []') in run.stdout
    assert (user / 'work' / 'epoch_1.pth').is_file()
