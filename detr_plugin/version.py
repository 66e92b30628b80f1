"""The package version and the versions of the OpenMMLab stack it supports.

Kept free of imports beyond the standard library: setup.py reads this file to declare the same
ranges as ``install_requires``.
"""
from importlib import metadata
from typing import Tuple

__version__ = '0.1.0'

# (distribution, lowest supported, first unsupported): the versions our tests run on, up to the
# next minor release (mmdet 3.3 itself requires mmcv < 2.2)
MM_VERSION_RANGES: Tuple[Tuple[str, str, str], ...] = (
    ('mmengine', '0.10.7', '0.11.0'),
    ('mmcv', '2.1.0', '2.2.0'),
    ('mmdet', '3.3.0', '3.4.0'),
)


def requirement(name: str, lowest: str, first_unsupported: str) -> str:
    return f'{name}>={lowest},<{first_unsupported}'


def _release(version: str) -> Tuple[int, ...]:
    """The numeric release of a version string, three numbers: '2.1.0rc1' -> (2, 1, 0),
    '0.10.7' -> (0, 10, 7), '3.3' -> (3, 3, 0)."""
    numbers = []
    for part in version.split('+')[0].split('.'):
        digits = ''
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        numbers.append(int(digits))
        if len(digits) < len(part):  # a pre-release or local suffix ends the release
            break
    return tuple(numbers + [0] * (3 - len(numbers)))


def check_mm_versions() -> None:
    """ImportError (one line) when mmengine, mmcv or mmdet is missing or outside its range."""
    for name, lowest, first_unsupported in MM_VERSION_RANGES:
        wanted = requirement(name, lowest, first_unsupported)
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise ImportError(f'detr_plugin {__version__} needs {wanted}, which is not installed '
                              f"(pip install '{wanted}')") from None
        if not _release(lowest) <= _release(installed) < _release(first_unsupported):
            raise ImportError(f'detr_plugin {__version__} needs {wanted}, but {name} {installed} '
                              f"is installed (pip install '{wanted}')")
