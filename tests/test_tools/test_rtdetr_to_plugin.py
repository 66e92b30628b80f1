"""detr_plugin.converters.rtdetr and tools/model_converters/rtdetr_to_plugin.py: key rules,
checkpoint layouts (EMA), RT-DETRv2 (its point-scale buffers dropped, the point counts read)."""
import pytest
import torch

from detr_plugin.converters import (CheckpointError, convert_original_checkpoint, convert_rtdetr,
                                    original_weights, v2_num_points)

# original rtdetr_pytorch key -> ours, one or more per rule
KEYS = {
    'backbone.conv1.conv1_1.conv.weight': 'backbone.stem.0.weight',
    'backbone.conv1.conv1_2.norm.running_var': 'backbone.stem.4.running_var',
    'backbone.conv1.conv1_3.norm.weight': 'backbone.stem.7.weight',
    'backbone.res_layers.0.blocks.0.branch2a.conv.weight': 'backbone.layer1.0.conv1.weight',
    'backbone.res_layers.2.blocks.5.branch2c.norm.bias': 'backbone.layer3.5.bn3.bias',
    'backbone.res_layers.0.blocks.0.short.conv.weight': 'backbone.layer1.0.downsample.1.weight',
    'backbone.res_layers.0.blocks.0.short.norm.running_mean':
        'backbone.layer1.0.downsample.2.running_mean',
    'backbone.res_layers.1.blocks.0.short.conv.conv.weight':
        'backbone.layer2.0.downsample.1.weight',
    'backbone.res_layers.1.blocks.0.short.conv.norm.weight':
        'backbone.layer2.0.downsample.2.weight',
    'encoder.input_proj.1.0.weight': 'neck.input_proj.1.0.weight',
    'encoder.encoder.0.layers.0.self_attn.in_proj_weight':
        'neck.encoder.0.layers.0.self_attn.in_proj_weight',
    'encoder.encoder.0.layers.0.linear2.bias': 'neck.encoder.0.layers.0.ffn.linear2.bias',
    'encoder.fpn_blocks.0.bottlenecks.2.conv1.norm.weight':
        'neck.fpn_blocks.0.bottlenecks.2.conv1.norm.weight',
    'encoder.pan_blocks.1.conv3.conv.weight': 'neck.pan_blocks.1.conv3.conv.weight',
    'decoder.input_proj.2.conv.weight': 'decoder.input_proj.2.conv.weight',
    'decoder.decoder.layers.3.cross_attn.sampling_offsets.bias':
        'decoder.layers.3.cross_attn.sampling_offsets.bias',
    'decoder.decoder.layers.0.linear1.weight': 'decoder.layers.0.ffn.linear1.weight',
    'decoder.decoder.layers.5.norm3.weight': 'decoder.layers.5.norm3.weight',
    'decoder.denoising_class_embed.weight': 'denoising.label_embed.weight',
    'decoder.query_pos_head.layers.1.bias': 'decoder.query_pos_head.layers.1.bias',
    'decoder.enc_output.1.weight': 'decoder.enc_output.1.weight',
    # RT-DETRv2's names (rtdetrv2_pytorch at 068dfde)
    'encoder.input_proj.2.conv.weight': 'neck.input_proj.2.0.weight',
    'encoder.input_proj.0.norm.running_mean': 'neck.input_proj.0.1.running_mean',
    'decoder.enc_output.proj.bias': 'decoder.enc_output.0.bias',
    'decoder.enc_output.norm.weight': 'decoder.enc_output.1.weight',
    'decoder.enc_score_head.bias': 'bbox_head.enc_cls_branch.bias',
    'decoder.enc_bbox_head.layers.2.weight': 'bbox_head.enc_reg_branch.layers.2.weight',
    'decoder.dec_score_head.4.weight': 'bbox_head.cls_branches.4.weight',
    'decoder.dec_bbox_head.0.layers.0.bias': 'bbox_head.reg_branches.0.layers.0.bias',
}


@pytest.fixture(scope='module')
def cli(load_tool):
    return load_tool('tools/model_converters/rtdetr_to_plugin.py')


def test_every_rule():
    for original, ours in KEYS.items():
        assert list(convert_rtdetr({original: torch.ones(1)}))[0] == ours, original
    with pytest.raises(KeyError, match='decoder.something_new'):
        convert_rtdetr({'decoder.dec_score_head.0.bias': torch.ones(1),
                        'decoder.something_new.weight': torch.ones(1)})


def test_frozen_bn_gets_num_batches_tracked_and_cached_buffers_are_dropped():
    state = {'backbone.conv1.conv1_1.norm.running_var': torch.ones(2),
             'decoder.enc_output.0.weight': torch.ones(2, 2),
             'encoder.pos_embed2': torch.zeros(1, 4, 2), 'decoder.anchors': torch.zeros(1)}
    out = convert_rtdetr(state)
    assert set(out) == {'backbone.stem.1.running_var', 'backbone.stem.1.num_batches_tracked',
                        'decoder.enc_output.0.weight'}
    # a bare PResNet checkpoint is a backbone
    assert set(convert_rtdetr({'conv1.conv1_1.conv.weight': torch.ones(1)})) == \
        {'backbone.stem.0.weight'}


def test_checkpoint_layouts():
    ema, model = {'a': torch.ones(1)}, {'b': torch.ones(1)}
    training = {'model': model, 'ema': {'module': ema, 'updates': 5}, 'last_epoch': 71}
    assert original_weights(training, 'x') is ema
    assert original_weights(training, 'x', ema=False) is model
    assert original_weights(model, 'x') is model
    with pytest.raises(CheckpointError, match=r"'x.pth' has no weights under 'ema' -> 'module'"):
        original_weights({'model': model}, 'x.pth', ema=True)
    with pytest.raises(CheckpointError, match=r"no weights under 'ema' -> 'module'.*updates"):
        original_weights({'ema': {'updates': 5}}, 'x.pth')
    with pytest.raises(CheckpointError, match='training checkpoint but has no weights'):
        original_weights({'optimizer': {}, 'last_epoch': 3}, 'x.pth')


def rtdetr_state(v2=False):
    state = {'decoder.dec_score_head.0.bias': torch.arange(3.),
             'decoder.decoder.layers.0.cross_attn.sampling_offsets.bias': torch.zeros(4)}
    if v2:  # points [3, 6, 3]: 1 / P_l for each point of level l
        state['decoder.decoder.layers.0.cross_attn.num_points_scale'] = torch.tensor(
            [1 / 3] * 3 + [1 / 6] * 6 + [1 / 3] * 3)
    return state


def test_loader_entry_point_takes_ema_and_converts_v2():
    ema = rtdetr_state()
    model = {k: v + 1 for k, v in ema.items()}
    out = convert_original_checkpoint({'model': model, 'ema': {'module': ema}}, 'x.pth')
    torch.testing.assert_close(out['bbox_head.cls_branches.0.bias'], torch.arange(3.))
    v2 = rtdetr_state(v2=True)
    assert v2_num_points(v2) == [3, 6, 3]
    out = convert_original_checkpoint({'ema': {'module': v2}}, 'v2.pth')
    assert sorted(out) == ['bbox_head.cls_branches.0.bias',
                           'decoder.layers.0.cross_attn.sampling_offsets.bias']


def run_cli(cli, monkeypatch, *argv) -> str:
    monkeypatch.setattr('sys.argv', ['rtdetr_to_plugin.py', *map(str, argv)])
    try:
        cli.main()
    except SystemExit as exit:
        return str(exit.code)
    return ''


def test_cli(cli, tmp_path, monkeypatch):
    src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
    torch.save({'model': rtdetr_state(), 'date': '2023-06-01T00:00:00', 'last_epoch': 71}, src)
    assert run_cli(cli, monkeypatch, src, dst) == ''
    out = torch.load(dst, weights_only=True)
    torch.testing.assert_close(out['state_dict']['bbox_head.cls_branches.0.bias'], torch.arange(3.))
    assert out['meta']['weights'] == 'model'
    message = run_cli(cli, monkeypatch, src, dst, '--ema')
    assert "no weights under 'ema'" in message and 'src.pth' in message

    v2 = tmp_path / 'rtdetrv2_r18vd.pth'
    torch.save({'ema': {'module': rtdetr_state(v2=True)}}, v2)
    assert run_cli(cli, monkeypatch, v2, dst) == ''
    assert 'num_points_scale' not in str(list(torch.load(dst, weights_only=True)['state_dict']))
