"""The README's own-data commands, run as written on the stand-in dataset they generate (CPU).

They write a tiny COCO-format dataset where configs/rtdetr/rtdetr_r18vd_1xb8-mydata.py expects
one, train it for one short epoch (with a validation and the best checkpoint) and evaluate it with
tools/test.py. The commands run in a scratch directory that links tools/ and configs/ of this
repository, with the test's Python first on PATH.
"""
import os
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# Exactly the block of the README's "Your own COCO-format data" section.
README_COMMANDS = """\
python tools/misc/make_demo_dataset.py --out data/my_data --num-train 2 --num-val 2 --size 64
python tools/train.py configs/rtdetr/rtdetr_r18vd_1xb8-mydata.py --work-dir work_dirs/my_data \\
    --cfg-options train_cfg.max_epochs=1 train_dataloader.batch_size=2 model.backbone.init_cfg=None
python tools/test.py configs/rtdetr/rtdetr_r18vd_1xb8-mydata.py work_dirs/my_data/epoch_1.pth
"""


def test_readme_holds_these_commands():
    readme = (REPO_ROOT / 'README.md').read_text()
    assert README_COMMANDS in readme, 'README.md lacks the own-data commands of this test'


def test_readme_own_data_commands_train_and_evaluate(tmp_path):
    for name in ('tools', 'configs'):
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    path = os.environ.get('PYTHONPATH')
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'],
               PYTHONPATH=str(REPO_ROOT) + (os.pathsep + path if path else ''))
    proc = subprocess.run(['bash', '-e', '-c', README_COMMANDS], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert 'Dataset check, train_dataloader' in output
    assert [p.name for p in (tmp_path / 'work_dirs' / 'my_data').glob('best_coco_bbox_mAP*.pth')]
    assert 'Final metrics: {' in proc.stdout
