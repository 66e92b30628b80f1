"""Fixture ``msda_ref``: the independent MSDA references of msda_reference.py (importlib mode puts
no test folder on sys.path, so it is loaded from its path)."""
import importlib.util
import pathlib

import pytest


def load_reference():
    path = pathlib.Path(__file__).with_name('msda_reference.py')
    spec = importlib.util.spec_from_file_location('msda_reference', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='session')
def msda_ref():
    return load_reference()
