"""Fixture for the tests of tools/: the repository root (``load_tool`` is in tests/conftest.py)."""
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope='session')
def repo_root() -> pathlib.Path:
    return REPO_ROOT
