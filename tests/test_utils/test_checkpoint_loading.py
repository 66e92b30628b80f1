"""load_detector_checkpoint: mmengine and bare checkpoints load; a checkpoint that does not fit is
refused in one line (or loaded in part on request); files are read weights-only."""
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from detr_plugin.utils import TRUST_OPTION, CheckpointError, load_detector_checkpoint


def tiny_model(out_features=3):
    return nn.Sequential(nn.Linear(4, out_features), nn.BatchNorm1d(out_features))


def test_loads_mmengine_checkpoint_with_ddp_prefix_and_ema_fields(tmp_path):
    source = tiny_model()
    state_dict = {'module.' + key: value for key, value in source.state_dict().items()}
    state_dict['ema_0_weight'] = torch.zeros(3, 4)  # an mmdet 2.x EMA buffer
    path = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': state_dict, 'meta': {'epoch': 3},
                'ema_state_dict': {'steps': torch.tensor(1)}}, path)
    target = tiny_model()
    assert load_detector_checkpoint(target, str(path)).meta == {'epoch': 3}
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_loads_bare_state_dict(tmp_path):
    source = tiny_model()
    torch.save(source.state_dict(), tmp_path / 'bare.pth')
    target = tiny_model()
    assert load_detector_checkpoint(target, str(tmp_path / 'bare.pth')).meta == {}
    assert torch.equal(target[0].weight, source[0].weight)


def other_architecture(tmp_path):
    """A checkpoint with a renamed key, a 5-class first layer and the 3-class BatchNorm's rest."""
    state_dict = tiny_model(out_features=5).state_dict()
    state_dict['head.weight'] = state_dict.pop('1.weight')
    for key in ('1.bias', '1.running_mean', '1.running_var'):
        state_dict[key] = torch.full((3,), 7.0)
    path = tmp_path / 'other.pth'
    torch.save({'state_dict': state_dict}, path)
    return str(path)


def test_other_architecture_names_keys_and_leaves_model_untouched(tmp_path):
    path = other_architecture(tmp_path)
    target = tiny_model()
    before = {key: value.clone() for key, value in target.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        load_detector_checkpoint(target, path)
    message = str(error.value)
    assert '\n' not in message and path in message
    assert '1 missing keys [1.weight]' in message
    assert '1 unexpected keys [head.weight]' in message
    assert '0.weight (5, 4) vs (3, 4)' in message
    assert all(torch.equal(target.state_dict()[key], value) for key, value in before.items())


def test_partial_load_keeps_the_model_values_of_what_does_not_fit(tmp_path):
    path = other_architecture(tmp_path)
    target = tiny_model()
    before = {key: value.clone() for key, value in target.state_dict().items()}
    with pytest.warns(UserWarning) as warned:
        load_detector_checkpoint(target, path, partial=True)
    message = str(warned[0].message)
    assert '\n' not in message and '1 missing keys [1.weight]' in message
    state = target.state_dict()
    for key in ('1.bias', '1.running_mean', '1.running_var'):  # matching: loaded
        assert torch.equal(state[key], torch.full((3,), 7.0)), key
    for key in ('0.weight', '0.bias', '1.weight'):  # another shape or missing: kept
        assert torch.equal(state[key], before[key]), key


def test_partial_load_refuses_a_checkpoint_with_nothing_in_common(tmp_path):
    torch.save({'state_dict': {'x.weight': torch.zeros(2)}}, tmp_path / 'unrelated.pth')
    with pytest.raises(CheckpointError, match=r'no weight in common'):
        load_detector_checkpoint(tiny_model(), str(tmp_path / 'unrelated.pth'), partial=True)


def test_long_key_lists_are_truncated(tmp_path):
    torch.save({f'extra.{i}': torch.zeros(1) for i in range(12)}, tmp_path / 'many.pth')
    expected = r'12 unexpected keys \[extra\.0, .*, \.\.\. \(\+7\)\]'
    with pytest.raises(CheckpointError, match=expected):
        load_detector_checkpoint(tiny_model(), str(tmp_path / 'many.pth'))


@pytest.mark.parametrize('content, match', [
    (None, 'does not exist'),
    (b'not a checkpoint', 'cannot read checkpoint'),
    ({'model': {'w': torch.zeros(1)}, 'epoch': 3},
     r"no state_dict of tensors \(top-level keys \[epoch, model\]\)"),
])
def test_unusable_files_give_one_line(tmp_path, content, match):
    path = tmp_path / 'bad.pth'
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=match) as error:
        load_detector_checkpoint(tiny_model(), str(path))
    assert '\n' not in str(error.value)


class WritesMarker:
    """Unpickling this object opens (so creates) the file ``marker``: code run by a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, 'w')


def test_a_pickle_that_runs_code_is_refused_unless_trusted(tmp_path):
    marker = tmp_path / 'marker'
    source = tiny_model()
    path = tmp_path / 'planted.pth'
    torch.save({'state_dict': source.state_dict(), 'extra': WritesMarker(marker)}, path)
    with pytest.raises(CheckpointError) as error:
        load_detector_checkpoint(tiny_model(), str(path))
    message = str(error.value)
    assert '\n' not in message and str(path) in message and TRUST_OPTION in message
    assert 'io.open' in message  # the object the file asked for
    assert not marker.exists(), 'weights-only loading must not run the planted code'
    # the opt-in really unpickles everything: the planted code runs
    load_detector_checkpoint(tiny_model(), str(path), trust=True)
    assert marker.exists()


class WritesMarkerThroughGetattr:
    """Unpickling this object calls ``getattr(np.ndarray, 'tofile')(array, marker)``: a method
    reached through ``getattr`` on an allowed class, which writes the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return np.ndarray.tofile, (np.zeros(1), self.marker)


def test_getattr_reaches_only_history_buffer_statistics(tmp_path):
    marker = tmp_path / 'marker'
    path = tmp_path / 'planted.pth'
    torch.save({'state_dict': tiny_model().state_dict(),
                'extra': WritesMarkerThroughGetattr(marker)}, path)
    with pytest.raises(CheckpointError) as error:
        load_detector_checkpoint(tiny_model(), str(path))
    assert 'numpy.ndarray.tofile' in str(error.value) and TRUST_OPTION in str(error.value)
    assert not marker.exists()
    load_detector_checkpoint(tiny_model(), str(path), trust=True)
    assert marker.exists(), 'the planted pickle does run code when fully unpickled'


def test_what_mmengine_and_our_hooks_store_loads_weights_only(tmp_path):
    """The message hub's HistoryBuffer (NumPy arrays), NumPy scalars, NumPy's random state (as
    RNGStateHook stores it), argparse.Namespace (original DETR checkpoints): torch's plain
    weights-only load reads them once detr_plugin is imported."""
    import argparse

    from mmengine.logging import HistoryBuffer
    history = HistoryBuffer()
    history.update(0.5)
    history.update(np.float64(0.25))
    content = {'message_hub': {'log_scalars': {'train/loss': history},
                               'runtime_info': {'lr': np.float32(1e-4), 'iter': np.int64(3)}},
               'rng_states': {'numpy': np.random.get_state()},
               'args': argparse.Namespace(lr=1e-4, backbone='resnet50', dilation=False)}
    torch.save(content, tmp_path / 'hub.pth')
    loaded = torch.load(tmp_path / 'hub.pth', weights_only=True)
    assert loaded['message_hub']['log_scalars']['train/loss'].mean() == 0.375
    assert loaded['message_hub']['runtime_info']['lr'] == np.float32(1e-4)
    state = loaded['rng_states']['numpy']
    assert state[0] == 'MT19937' and np.array_equal(state[1], np.random.get_state()[1])
    assert loaded['args'].backbone == 'resnet50'


@pytest.fixture
def fake_converters(monkeypatch):
    """``detr_plugin.converters`` standing in for the real one: 'model' -> our 'weight' name."""
    module = types.ModuleType('detr_plugin.converters')

    def convert_original_checkpoint(checkpoint, source):
        if 'model' not in checkpoint:
            return None
        if 'variant_we_cannot_convert' in checkpoint:
            raise CheckpointError(f'{source}: a two-stage checkpoint for a plain model')
        return {key.replace('linear', '0'): value for key, value in checkpoint['model'].items()}

    module.convert_original_checkpoint = convert_original_checkpoint
    monkeypatch.setitem(sys.modules, 'detr_plugin.converters', module)


def test_original_checkpoints_are_converted_on_the_fly(tmp_path, fake_converters):
    source = tiny_model()
    original = {'model': {key.replace('0', 'linear'): value
                          for key, value in source.state_dict().items()}, 'epoch': 10}
    torch.save(original, tmp_path / 'original.pth')
    target = tiny_model()
    weights = load_detector_checkpoint(target, str(tmp_path / 'original.pth'))
    assert weights.meta == {'converted_from': str(tmp_path / 'original.pth')}
    assert torch.equal(target[0].weight, source[0].weight)
    torch.save(dict(original, variant_we_cannot_convert=True), tmp_path / 'variant.pth')
    with pytest.raises(CheckpointError, match='a two-stage checkpoint for a plain model'):
        load_detector_checkpoint(target, str(tmp_path / 'variant.pth'))
