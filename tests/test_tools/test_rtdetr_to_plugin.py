"""tools/model_converters/rtdetr_to_plugin.py: key rules, checkpoint layouts, strict loading."""
import pytest
import torch

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
    'decoder.enc_score_head.bias': 'bbox_head.enc_cls_branch.bias',
    'decoder.enc_bbox_head.layers.2.weight': 'bbox_head.enc_reg_branch.layers.2.weight',
    'decoder.dec_score_head.4.weight': 'bbox_head.cls_branches.4.weight',
    'decoder.dec_bbox_head.0.layers.0.bias': 'bbox_head.reg_branches.0.layers.0.bias',
}


@pytest.fixture(scope='module')
def converter(load_tool):
    return load_tool('tools/model_converters/rtdetr_to_plugin.py')


def test_every_rule(converter):
    for original, ours in KEYS.items():
        assert converter.convert_key(original) == ours, original
    with pytest.raises(KeyError, match='no conversion rule'):
        converter.convert_key('decoder.something_new.weight')


def test_frozen_bn_gets_num_batches_tracked_and_cached_buffers_are_dropped(converter):
    state = {'backbone.conv1.conv1_1.norm.running_var': torch.ones(2),
             'decoder.enc_output.0.weight': torch.ones(2, 2),
             'encoder.pos_embed2': torch.zeros(1, 4, 2), 'decoder.anchors': torch.zeros(1)}
    out = converter.convert_state_dict(state)
    assert set(out) == {'backbone.stem.1.running_var', 'backbone.stem.1.num_batches_tracked',
                        'decoder.enc_output.0.weight'}
    # a bare PResNet checkpoint is a backbone
    assert set(converter.convert_state_dict({'conv1.conv1_1.conv.weight': torch.ones(1)})) == \
        {'backbone.stem.0.weight'}


def test_checkpoint_layouts(converter):
    ema, model = {'a': torch.ones(1)}, {'b': torch.ones(1)}
    assert converter.model_state({'model': model, 'ema': {'module': ema}}) is ema
    assert converter.model_state({'model': model, 'ema': {'module': ema}}, use_ema=False) is model
    assert converter.model_state(model) is model
    with pytest.raises(ValueError, match='no .ema.module'):
        converter.model_state({'optimizer': {}, 'epoch': 3})


def test_cli_writes_mmengine_checkpoint(converter, tmp_path, monkeypatch):
    src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
    torch.save({'model': {'decoder.enc_score_head.bias': torch.arange(3.)}}, src)
    monkeypatch.setattr('sys.argv', ['rtdetr_to_plugin.py', str(src), str(dst)])
    converter.main()
    out = torch.load(dst, weights_only=False)
    torch.testing.assert_close(out['state_dict']['bbox_head.enc_cls_branch.bias'], torch.arange(3.))
