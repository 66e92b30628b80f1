"""``import detr_plugin`` checks the mm stack against the supported ranges of
detr_plugin/version.py."""
from importlib import metadata

import pytest

from detr_plugin import version


def fake_versions(monkeypatch, **versions):
    real = metadata.version

    def fake(name):
        if name in versions:
            if versions[name] is None:
                raise metadata.PackageNotFoundError(name)
            return versions[name]
        return real(name)

    monkeypatch.setattr(version.metadata, 'version', fake)


def test_the_installed_stack_is_supported():
    version.check_mm_versions()
    assert version.__version__ == metadata.version('detr_plugin')


@pytest.mark.parametrize('name, installed', [('mmcv', '2.2.0'), ('mmcv', '2.0.1'),
                                             ('mmengine', '0.11.0'), ('mmdet', '3.2.0')])
def test_out_of_range_fails_with_one_line(monkeypatch, name, installed):
    fake_versions(monkeypatch, **{name: installed})
    with pytest.raises(ImportError) as error:
        version.check_mm_versions()
    message = str(error.value)
    assert f'{name} {installed} is installed' in message and '\n' not in message
    assert {'mmcv': "mmcv>=2.1.0,<2.2.0", 'mmengine': 'mmengine>=0.10.7,<0.11.0',
            'mmdet': 'mmdet>=3.3.0,<3.4.0'}[name] in message


@pytest.mark.parametrize('installed', ['2.1.0', '2.1.1', '2.1.0+cu121'])
def test_in_range_passes(monkeypatch, installed):
    fake_versions(monkeypatch, mmcv=installed)
    version.check_mm_versions()


def test_missing_package(monkeypatch):
    fake_versions(monkeypatch, mmdet=None)
    with pytest.raises(ImportError, match=r"needs mmdet>=3.3.0,<3.4.0, which is not installed"):
        version.check_mm_versions()
