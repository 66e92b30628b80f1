"""Fixture ``msda_ref``: the independent MSDA references of msda_reference.py (importlib mode puts
no test folder on sys.path, so it is loaded from its path)."""
import pytest


@pytest.fixture(scope='session')
def msda_ref(load_tool):
    return load_tool('tests/test_ops/msda_reference.py')
