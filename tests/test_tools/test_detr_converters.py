"""detr_to_plugin.py and deformable_detr_to_plugin.py on hand-written original keys: the renames
that are not one to one (decoder norms, input projections, aliases), COCO-80 rows, BN counters,
unknown keys. (Whole-model parity with the originals: docs/parity.md.)"""
import pytest
import torch


@pytest.fixture(scope='module')
def ddetr(load_tool):
    return load_tool('tools/model_converters/deformable_detr_to_plugin.py')


@pytest.fixture(scope='module')
def detr(load_tool):
    return load_tool('tools/model_converters/detr_to_plugin.py')


def t(*shape):
    return torch.randn(*shape)


def test_deformable_detr_keys(ddetr):
    original = {
        'backbone.0.body.layer2.0.bn1.running_mean': t(4),
        'backbone.0.body.conv1.weight': t(4, 3, 7, 7),
        'input_proj.0.0.weight': t(8, 4, 1, 1), 'input_proj.0.1.weight': t(8),
        'input_proj.1.0.weight': t(8, 6, 1, 1),
        'input_proj.2.0.weight': t(8, 6, 3, 3), 'input_proj.2.1.bias': t(8),
        'transformer.level_embed': t(3, 8),
        'transformer.encoder.layers.0.linear2.weight': t(8, 16),
        'transformer.encoder.layers.0.norm2.bias': t(8),
        'transformer.encoder.layers.0.self_attn.sampling_offsets.bias': t(16),
        'transformer.decoder.layers.1.norm1.weight': t(8),
        'transformer.decoder.layers.1.norm2.weight': t(8),
        'transformer.decoder.layers.1.norm3.weight': t(8),
        'transformer.decoder.layers.1.self_attn.in_proj_weight': t(24, 8),
        'transformer.decoder.layers.1.cross_attn.value_proj.weight': t(8, 8),
        'transformer.decoder.layers.1.linear1.bias': t(16),
        'transformer.decoder.bbox_embed.0.layers.2.bias': t(4),
        'transformer.decoder.class_embed.6.weight': t(91, 8),
        'transformer.enc_output.weight': t(8, 8), 'transformer.enc_output_norm.bias': t(8),
        'transformer.pos_trans.weight': t(16, 16), 'transformer.pos_trans_norm.weight': t(16),
        'transformer.reference_points.bias': t(2),
        'query_embed.weight': t(5, 16),
        'class_embed.6.weight': t(91, 8), 'class_embed.6.bias': t(91),
        'bbox_embed.0.layers.2.bias': t(4),
    }
    expected_names = {
        'backbone.0.body.layer2.0.bn1.running_mean': 'backbone.layer2.0.bn1.running_mean',
        'backbone.0.body.conv1.weight': 'backbone.conv1.weight',
        'input_proj.0.0.weight': 'neck.convs.0.conv.weight',
        'input_proj.0.1.weight': 'neck.convs.0.gn.weight',
        'input_proj.1.0.weight': 'neck.convs.1.conv.weight',
        'input_proj.2.0.weight': 'neck.extra_convs.0.conv.weight',
        'input_proj.2.1.bias': 'neck.extra_convs.0.gn.bias',
        'transformer.level_embed': 'level_embed',
        'transformer.encoder.layers.0.linear2.weight': 'encoder.layers.0.ffn.linear2.weight',
        'transformer.encoder.layers.0.norm2.bias': 'encoder.layers.0.norm2.bias',
        'transformer.encoder.layers.0.self_attn.sampling_offsets.bias':
            'encoder.layers.0.self_attn.sampling_offsets.bias',
        # the original's norm1 follows cross-attention and norm2 self-attention; ours the reverse
        'transformer.decoder.layers.1.norm1.weight': 'decoder.layers.1.norm2.weight',
        'transformer.decoder.layers.1.norm2.weight': 'decoder.layers.1.norm1.weight',
        'transformer.decoder.layers.1.norm3.weight': 'decoder.layers.1.norm3.weight',
        'transformer.decoder.layers.1.self_attn.in_proj_weight':
            'decoder.layers.1.self_attn.in_proj_weight',
        'transformer.decoder.layers.1.cross_attn.value_proj.weight':
            'decoder.layers.1.cross_attn.value_proj.weight',
        'transformer.decoder.layers.1.linear1.bias': 'decoder.layers.1.ffn.linear1.bias',
        'transformer.enc_output.weight': 'proposals.memory_proj.weight',
        'transformer.enc_output_norm.bias': 'proposals.memory_norm.bias',
        'transformer.pos_trans.weight': 'proposals.query_proj.weight',
        'transformer.pos_trans_norm.weight': 'proposals.query_norm.weight',
        'transformer.reference_points.bias': 'reference_points.bias',
        'query_embed.weight': 'query_embedding.weight',
        'class_embed.6.weight': 'bbox_head.cls_branches.6.weight',
        'class_embed.6.bias': 'bbox_head.cls_branches.6.bias',
        'bbox_embed.0.layers.2.bias': 'bbox_head.reg_branches.0.layers.2.bias',
    }
    converted = ddetr.convert(original)
    # the decoder's aliases of the heads are dropped; BN counters added
    assert set(converted) == set(expected_names.values()) | {
        'backbone.layer2.0.bn1.num_batches_tracked'}
    for old, new in expected_names.items():
        assert converted[new] is original[old]
    assert ddetr.describe(original) == 'with_box_refine + two-stage'

    coco = ddetr.convert(original, coco80=True)
    ids = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
           27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51,
           52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77,
           78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]
    torch.testing.assert_close(coco['bbox_head.cls_branches.6.weight'],
                               original['class_embed.6.weight'][ids])
    torch.testing.assert_close(coco['bbox_head.cls_branches.6.bias'], original['class_embed.6.bias'][ids])


def test_detr_keys(detr):
    original = {
        'backbone.0.body.layer4.2.bn3.running_mean': t(4),
        'input_proj.weight': t(8, 16, 1, 1), 'input_proj.bias': t(8),
        'transformer.encoder.layers.5.self_attn.out_proj.weight': t(8, 8),
        'transformer.encoder.layers.5.linear1.weight': t(16, 8),
        'transformer.decoder.layers.0.multihead_attn.in_proj_bias': t(24),
        'transformer.decoder.layers.0.norm3.bias': t(8),
        'transformer.decoder.norm.weight': t(8),
        'query_embed.weight': t(5, 8),
        'class_embed.weight': t(92, 8), 'class_embed.bias': t(92),
        'bbox_embed.layers.0.weight': t(8, 8),
    }
    converted = detr.convert(original)
    expected = {
        'backbone.layer4.2.bn3.running_mean', 'backbone.layer4.2.bn3.num_batches_tracked',
        'neck.convs.0.conv.weight', 'neck.convs.0.conv.bias',
        'encoder.layers.5.self_attn.out_proj.weight', 'encoder.layers.5.ffn.linear1.weight',
        'decoder.layers.0.cross_attn.in_proj_bias', 'decoder.layers.0.norm3.bias',
        'decoder.norm.weight', 'query_embedding.weight', 'bbox_head.fc_cls.weight',
        'bbox_head.fc_cls.bias', 'bbox_head.fc_reg.layers.0.weight'}
    assert set(converted) == expected
    coco = detr.convert(original, coco80=True)
    rows = coco['bbox_head.fc_cls.bias']
    assert rows.shape == (81, )
    # class 11 of 80 is COCO id 13 (id 12 unused); no-object stays last
    assert rows[11] == original['class_embed.bias'][13] and rows[80] == original['class_embed.bias'][91]


def test_unknown_keys_are_reported(detr):
    with pytest.raises(KeyError, match='transformer.mystery'):
        detr.convert({'transformer.mystery.weight': t(2)})
