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


@pytest.mark.parametrize('path', CONFIGS)
def test_training_workers_restart_every_epoch(path):
    """RNGStateHook seeds the workers per epoch; persistent ones would keep their generators from
    one epoch to the next, where no checkpoint holds them, and --resume would not be exact."""
    assert not Config.fromfile(path).train_dataloader.get('persistent_workers', False), path
