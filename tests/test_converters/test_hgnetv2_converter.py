"""The original HGNetv2's ImageNet "stage 1" weights -> our HGNetv2, through ``hgnetv2://``.

The original's state-dict layout comes from tests/data/hgnetv2/original_b0_use_lab_keys.json
(names and shapes of Peterande/D-FINE's HGNetv2('B0', use_lab=True), written by
tests/data/hgnetv2/make_fixtures.py from the original code)."""
import json
import pathlib

import pytest
import torch
from mmengine.runner import CheckpointLoader

from detr_plugin.converters import (HGNETV2_URLS, CheckpointError, convert_hgnetv2,
                                    hgnetv2_rules)
from detr_plugin.converters.rules import rename
from detr_plugin.registry import MODELS
from detr_plugin.utils import register_all_modules

register_all_modules()
DATA = pathlib.Path(__file__).resolve().parents[1] / 'data' / 'hgnetv2'
SHAPES = json.loads((DATA / 'original_b0_use_lab_keys.json').read_text())['shapes']

# original key -> ours, written by hand from the two module trees
BY_HAND = {
    'stem.stem2a.lab.scale': 'stem.stem2a.lab.scale',
    'stages.1.downsample.bn.running_var': 'stages.1.downsample.bn.running_var',
    'stages.0.blocks.0.layers.2.conv.weight': 'stages.0.blocks.0.layers.2.conv.weight',
    'stages.2.blocks.1.layers.0.conv1.conv.weight':
        'stages.2.blocks.1.layers.0.pointwise.conv.weight',
    'stages.2.blocks.1.layers.0.conv1.bn.bias': 'stages.2.blocks.1.layers.0.pointwise.bn.bias',
    'stages.3.blocks.0.layers.2.conv2.conv.weight':
        'stages.3.blocks.0.layers.2.depthwise.conv.weight',
    'stages.3.blocks.0.layers.2.conv2.lab.bias': 'stages.3.blocks.0.layers.2.depthwise.lab.bias',
    'stages.1.blocks.0.aggregation.0.bn.running_mean':
        'stages.1.blocks.0.aggregation.squeeze.bn.running_mean',
    'stages.2.blocks.0.aggregation.1.lab.scale':
        'stages.2.blocks.0.aggregation.excitation.lab.scale',
}


def original_b0(use_lab=True, counters=True):
    """Random weights in the original B0's layout (``counters``: BatchNorm's
    num_batches_tracked, as a file saved from a model without frozen norms holds them)."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in SHAPES.items():
        if (not use_lab and '.lab.' in key) or (not counters and 'num_batches' in key):
            continue
        state[key] = (torch.tensor(7) if 'num_batches' in key
                      else torch.rand(shape, generator=gen) + 0.5)
    return state


def build(use_lab=True, norm='BN', **kwargs):
    return MODELS.build(dict(type='HGNetv2', arch='B0', use_lab=use_lab,
                             norm_cfg=dict(type=norm), **kwargs))


def test_every_original_tensor_lands_where_the_hand_map_says():
    original = original_b0()
    converted = convert_hgnetv2(original)
    assert len(converted) == len(original)
    for theirs, ours in BY_HAND.items():
        assert torch.equal(converted[ours], original[theirs]), theirs
    build().load_state_dict(converted, strict=True)


@pytest.mark.parametrize('use_lab', [True, False])
@pytest.mark.parametrize('norm', ['BN', 'FrozenBatchNorm2d'])
def test_files_with_or_without_counters_load_strictly(use_lab, norm):
    """Counters missing (a file saved with frozen norms): zero ones are added for BatchNorm;
    FrozenBatchNorm2d drops them."""
    converted = convert_hgnetv2(original_b0(use_lab, counters=False))
    assert converted['stem.stem1.bn.num_batches_tracked'] == 0
    build(use_lab, norm).load_state_dict(converted, strict=True)


@pytest.mark.parametrize('layout', ['bare', 'model', 'state_dict'])
def test_scheme_reads_a_downloaded_file_for_the_config_init_cfg(tmp_path, layout):
    """What a config does: init_cfg=Pretrained with hgnetv2://FILE, the file as the original
    saves it (a bare state dict) or wrapped under 'model' / 'state_dict'."""
    original = original_b0()
    path = tmp_path / 'PPHGNetV2_B0_stage1.pth'
    torch.save(original if layout == 'bare' else {layout: original, 'epoch': 3}, path)
    net = build(init_cfg=dict(type='Pretrained', checkpoint=f'hgnetv2://{path}'))
    net.init_weights()
    layer = net.stages[2].blocks[1].layers[0]
    assert torch.equal(layer.pointwise.conv.weight,
                       original['stages.2.blocks.1.layers.0.conv1.conv.weight'])
    assert torch.equal(net.stem.stem4.bn.running_var, original['stem.stem4.bn.running_var'])


def test_scheme_by_name_downloads_once_into_torch_hub(tmp_path, monkeypatch):
    src = tmp_path / 'PPHGNetV2_B0_stage1.pth'
    torch.save(original_b0(), src)
    monkeypatch.setitem(HGNETV2_URLS, 'B0', src.as_uri())
    monkeypatch.setitem(HGNETV2_URLS, 'B2', src.as_uri())  # a B0 file where B2 is asked for
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    weights = CheckpointLoader.load_checkpoint('hgnetv2://B0')
    assert (tmp_path / 'hub' / 'checkpoints' / src.name).is_file()
    build().load_state_dict(weights, strict=True)
    with pytest.raises(CheckpointError, match=r'does not fit HGNetv2-B2 \(use_lab=True\)'):
        CheckpointLoader.load_checkpoint('hgnetv2://B2')


def one_line_error(tmp_path, state) -> str:
    path = tmp_path / 'weights.pth'
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        CheckpointLoader.load_checkpoint(f'hgnetv2://{path}')
    message = str(error.value)
    assert '\n' not in message and str(path) in message
    return message


def test_a_key_too_many_or_missing_is_named(tmp_path):
    state = original_b0()
    state['stages.0.blocks.0.layers.0.conv3.weight'] = torch.zeros(1)
    assert 'stages.0.blocks.0.layers.0.conv3.weight' in one_line_error(tmp_path, state)

    state = original_b0()
    del state['stages.3.blocks.0.aggregation.1.conv.weight']
    message = one_line_error(tmp_path, state)
    assert 'closest B0' in message
    assert 'stages.3.blocks.0.aggregation.excitation.conv.weight' in message

    state = original_b0()
    state['stem.stem1.conv.weight'] = torch.zeros(16, 3, 5, 5)
    assert 'stem.stem1.conv.weight (16, 3, 5, 5) vs (16, 3, 3, 3)' in one_line_error(tmp_path,
                                                                                     state)
    assert 'no HGNetv2 state dict' in one_line_error(tmp_path, {'epoch': 3})


def test_rules_rename_the_backbone_of_a_full_checkpoint():
    """The D-FINE / DEIM full-model converters rename ``backbone.*`` with these rules."""
    full = {f'backbone.{k}': v for k, v in original_b0().items()}
    full['decoder.dec_bbox_head.0.layers.0.weight'] = torch.zeros(1)
    renamed = rename(full, hgnetv2_rules('backbone.') + ((r'^decoder\.', None), ))
    for theirs, ours in BY_HAND.items():
        assert torch.equal(renamed[f'backbone.{ours}'], full[f'backbone.{theirs}'])
    assert len(renamed) == len(full) - 1
