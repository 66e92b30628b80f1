"""Shared pytest setup: tests marked ``gpu`` are skipped when torch sees no CUDA device; every
test starts in the ``detr_plugin`` default scope, whatever scope an earlier test's Runner set;
the ``demo_runs`` fixture gives the helpers of tests/demo_runs.py (training runs on tiny data),
``load_tool`` imports a script by its path.

pytest runs with --import-mode=importlib, so a helper module beside the tests is not importable
by name; it is loaded from its path.
"""
import importlib.util
import pathlib

import pytest
from mmengine.registry import DefaultScope


@pytest.fixture(scope='session')
def demo_runs():
    path = pathlib.Path(__file__).with_name('demo_runs.py')
    spec = importlib.util.spec_from_file_location('tests_demo_runs', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='session')
def load_tool(demo_runs):
    """``load_tool('tools/train.py')`` imports a file that is not in a package (a script of
    tools/, a helper beside the tests) as a module; the path is relative to the repository root."""
    return demo_runs.load_script


@pytest.fixture(autouse=True)
def detr_plugin_default_scope():
    import detr_plugin  # noqa: F401  (registers our modules)
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        yield


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason='needs a CUDA GPU (torch.cuda.is_available() is False)')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip_gpu)
