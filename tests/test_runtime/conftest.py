"""Fixture giving the runtime tests their shared helpers (tests/test_runtime/demo_runs.py).

pytest runs with --import-mode=importlib, so a helper module beside the tests is not importable
by name; it is loaded from its path here.
"""
import importlib.util
import pathlib

import pytest


@pytest.fixture(scope='session')
def demo_runs():
    path = pathlib.Path(__file__).with_name('demo_runs.py')
    spec = importlib.util.spec_from_file_location('runtime_demo_runs', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
