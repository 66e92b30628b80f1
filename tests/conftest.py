"""Shared pytest setup: tests marked ``gpu`` are skipped when torch sees no CUDA device."""
import pytest


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason='needs a CUDA GPU (torch.cuda.is_available() is False)')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip_gpu)
