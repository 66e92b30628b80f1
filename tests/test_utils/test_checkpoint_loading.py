"""load_detector_checkpoint: mmengine and bare checkpoints load; anything else is one clear line."""
import pytest
import torch
from torch import nn

from detr_plugin.utils import CheckpointError, load_detector_checkpoint


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
    assert load_detector_checkpoint(target, str(path)) == {'epoch': 3}
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_loads_bare_state_dict(tmp_path):
    source = tiny_model()
    torch.save(source.state_dict(), tmp_path / 'bare.pth')
    target = tiny_model()
    assert load_detector_checkpoint(target, str(tmp_path / 'bare.pth')) == {}
    assert torch.equal(target[0].weight, source[0].weight)


def test_other_architecture_names_keys_and_leaves_model_untouched(tmp_path):
    state_dict = tiny_model(out_features=5).state_dict()
    state_dict['head.weight'] = state_dict.pop('1.weight')
    torch.save({'state_dict': state_dict}, tmp_path / 'other.pth')
    target = tiny_model()
    before = {key: value.clone() for key, value in target.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        load_detector_checkpoint(target, str(tmp_path / 'other.pth'))
    message = str(error.value)
    assert '\n' not in message
    assert '1 missing keys [1.weight]' in message
    assert '1 unexpected keys [head.weight]' in message
    assert '0.weight (5, 4) vs (3, 4)' in message
    assert all(torch.equal(target.state_dict()[key], value) for key, value in before.items())


def test_long_key_lists_are_truncated(tmp_path):
    torch.save({f'extra.{i}': torch.zeros(1) for i in range(12)}, tmp_path / 'many.pth')
    expected = r'12 unexpected keys \[extra\.0, .*, \.\.\. \(\+7\)\]'
    with pytest.raises(CheckpointError, match=expected):
        load_detector_checkpoint(tiny_model(), str(tmp_path / 'many.pth'))


@pytest.mark.parametrize('content, match', [
    (None, 'does not exist'),
    (b'not a checkpoint', 'cannot read checkpoint'),
    ({'model': {'w': torch.zeros(1)}}, r"no state_dict of tensors \(top-level keys \[model\]\)"),
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
