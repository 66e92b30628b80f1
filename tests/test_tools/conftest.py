"""Fixtures for the tests of tools/: loading a script as a module, and the repository root."""
import importlib.util
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope='session')
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(scope='session')
def load_tool():
    """``load_tool('tools/train.py')`` imports a script of tools/ (not a package) as a module."""
    def load(relative_path: str):
        path = REPO_ROOT / relative_path
        spec = importlib.util.spec_from_file_location(path.stem + '_under_test', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
