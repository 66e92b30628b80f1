"""Every training config keeps the default runtime's hooks (a config that sets custom_hooks
replaces the list, so the checks must be listed again there)."""
import glob

import pytest
from mmengine.config import Config

CONFIGS = sorted(p for p in glob.glob('configs/*/*.py') if '_base_' not in p)


@pytest.mark.parametrize('path', CONFIGS)
def test_config_keeps_default_hooks(path):
    hooks = {h['type'] for h in Config.fromfile(path).get('custom_hooks', [])}
    expected = {'NumClassesCheckHook', 'RNGStateHook', 'CPUAffinityHook'}
    assert expected <= hooks, f'{path}: {sorted(hooks)}'


@pytest.mark.parametrize('path', CONFIGS)
def test_config_checks_its_datasets(path):
    cfg = Config.fromfile(path)
    assert cfg.default_hooks.get('dataset_check', {}).get('type') == 'DatasetCheckHook', path
