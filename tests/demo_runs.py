"""Helpers shared by the tests that run tools/train.py: a tiny demo dataset, its --cfg-options
and the command line, and a stand-in runner for the checkpoint hooks (the ``demo_runs`` fixture of
tests/conftest.py)."""
import importlib.util
import json
import logging
import os
import pathlib
import socket
import sys
import types
from typing import Iterable, List

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a test's process group)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def load_script(relative_path: str):
    """A file of the repository that is not in a package (a script of tools/, a helper beside the
    tests), imported as a module from its path relative to the repository root."""
    path = REPO_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem + '_under_test', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_make_demo_dataset():
    """tools/misc/make_demo_dataset.py imported as a module."""
    return load_script('tools/misc/make_demo_dataset.py')


def make_tiny_dataset(out: pathlib.Path, num_train: int, empty_images: Iterable[int] = ()):
    """Generated demo images; the training images with ids in ``empty_images`` lose their boxes."""
    load_make_demo_dataset().make_demo_dataset(
        str(out), seed=1, num_train=num_train, num_val=2)
    ann_path = out / 'annotations' / 'instances_train.json'
    coco = json.loads(ann_path.read_text())
    empty = set(empty_images)
    coco['annotations'] = [a for a in coco['annotations'] if a['image_id'] not in empty]
    ann_path.write_text(json.dumps(coco))
    return coco


def tiny_run_options(data_root: pathlib.Path, batch_size: int) -> List[str]:
    """--cfg-options: this data, no workers, no validation, a log line per iteration."""
    options = ['train_cfg.val_begin=1000', f'train_dataloader.batch_size={batch_size}',
               'default_hooks.logger.interval=1']
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options += [f'{loader}.dataset.data_root={data_root}/', f'{loader}.num_workers=0',
                    f'{loader}.persistent_workers=False']
    for evaluator in ('val_evaluator', 'test_evaluator'):
        options.append(f'{evaluator}.ann_file={data_root}/annotations/instances_val.json')
    return options


def read_demo_data(cfg, data_root: pathlib.Path) -> None:
    """Points a demo config's loaders (no workers) and evaluators at the dataset in ``data_root``,
    in place: what tiny_run_options says on the command line, for a Config in the test."""
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = f'{data_root}/'
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    for evaluator in ('val_evaluator', 'test_evaluator'):
        cfg[evaluator].ann_file = f'{data_root}/annotations/instances_val.json'


class LogLines(logging.Handler):
    """Keeps the messages logged to it, in ``lines``."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def fake_runner(model, load_from: str, name: str = 'checkpoint_hook_test'):
    """What CheckpointCheckHook reads of a Runner: the model, ``cfg.load_from`` and a logger
    whose messages land in ``runner.logger.handlers[0].lines``."""
    from mmengine.config import Config
    logger = logging.getLogger(name)
    logger.handlers, logger.propagate = [LogLines()], False
    return types.SimpleNamespace(model=model, cfg=Config(dict(load_from=load_from)), logger=logger)


def tool_env() -> dict:
    path = os.environ.get('PYTHONPATH')
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT) + (os.pathsep + path if path else ''),
                OMP_NUM_THREADS='1')


def train_command(*args: str) -> List[str]:
    return [sys.executable, str(REPO_ROOT / 'tools' / 'train.py'), *args]
