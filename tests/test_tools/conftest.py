"""Fixtures for the tests of tools/: the repository root and the originals' checkouts
(``load_tool`` is in tests/conftest.py)."""
import importlib.util
import os
import pathlib
from typing import Callable, Sequence

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope='session')
def repo_root() -> pathlib.Path:
    return REPO_ROOT


# family: (environment variable, folder under /work/ref and .device/ref, a folder it must hold)
ORIGINAL_CHECKOUTS = {'dfine': ('DFINE_ROOT', 'D-FINE', 'src/zoo/dfine'),
                      'deim': ('DEIM_ROOT', 'DEIM', 'engine/deim')}
MODEL_IMPORTS = ('torchvision', 'tensorboard', 'scipy', 'yaml')  # the originals' model code


@pytest.fixture
def original_checkout(repo_root) -> Callable[..., pathlib.Path]:
    """``find(version, imports)``: a checkout of Peterande/D-FINE or ShihuaHuang95/DEIM
    ($DFINE_ROOT / $DEIM_ROOT, /work/ref/ or the copy carried to the GPU machine, .device/ref/),
    else skip; skips too when a module of ``imports`` is not installed."""
    def find(version: str, imports: Sequence[str] = MODEL_IMPORTS) -> pathlib.Path:
        variable, folder, marker = ORIGINAL_CHECKOUTS[version]
        candidates = [os.environ.get(variable, f'/work/ref/{folder}'),
                      repo_root / '.device' / 'ref' / folder]
        root = next((pathlib.Path(c) for c in candidates if (pathlib.Path(c) / marker).is_dir()),
                    None)
        if root is None:
            pytest.skip(f'no checkout of the original {folder} (${variable}, /work/ref/{folder})')
        missing = [m for m in imports if importlib.util.find_spec(m) is None]
        if missing:
            pytest.skip(f'the original {folder} imports {", ".join(missing)}, not installed here')
        return root
    return find
