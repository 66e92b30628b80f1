"""Shared pytest setup: tests marked ``gpu`` are skipped when torch sees no CUDA device; every
test starts in the ``detr_plugin`` default scope, whatever scope an earlier test's Runner set."""
import pytest
from mmengine.registry import DefaultScope


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
