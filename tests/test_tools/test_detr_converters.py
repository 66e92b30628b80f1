"""detr_plugin.converters (DETR, Deformable DETR) and their command lines on hand-written original
keys: the renames that are not one to one (decoder norms, input projections, aliases), COCO-80
rows (the two-stage proposal score included), variants, unknown keys and unreadable files.
(Whole-model parity with the originals: docs/parity.md.)"""
import argparse
import os

import pytest
import torch

from detr_plugin.converters import (CheckpointError, convert_deformable_detr, convert_detr,
                                    convert_original_checkpoint, deformable_detr_variant)

# COCO category ids of mmdet's 80 classes, written out
COCO80 = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
          27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51,
          52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77,
          78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]


@pytest.fixture(scope='module')
def ddetr_cli(load_tool):
    return load_tool('tools/model_converters/deformable_detr_to_plugin.py')


@pytest.fixture(scope='module')
def detr_cli(load_tool):
    return load_tool('tools/model_converters/detr_to_plugin.py')


def t(*shape):
    return torch.randn(*shape)


def two_stage_original(embed_dims=8, num_layers=6, num_classes=91):
    """The keys of a --with_box_refine --two_stage original with random tensors: the decoder's
    class/box heads 0-5, the encoder's proposal heads 6, and the decoder's aliases of them."""
    state = {'transformer.level_embed': t(4, embed_dims),
             'transformer.enc_output.weight': t(embed_dims, embed_dims),
             'transformer.enc_output_norm.bias': t(embed_dims)}
    for i in range(num_layers):
        state[f'transformer.decoder.layers.{i}.norm3.weight'] = t(embed_dims)
    for i in range(num_layers + 1):
        state[f'class_embed.{i}.weight'] = t(num_classes, embed_dims)
        state[f'class_embed.{i}.bias'] = t(num_classes)
        state[f'bbox_embed.{i}.layers.2.bias'] = t(4)
        state[f'transformer.decoder.class_embed.{i}.bias'] = state[f'class_embed.{i}.bias']
        state[f'transformer.decoder.bbox_embed.{i}.layers.2.bias'] = \
            state[f'bbox_embed.{i}.layers.2.bias']
    return state


def test_deformable_detr_keys():
    original = {
        'backbone.0.body.layer2.0.bn1.running_var': t(4),
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
        'backbone.0.body.layer2.0.bn1.running_var': 'backbone.layer2.0.bn1.running_var',
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
    converted = convert_deformable_detr(original)
    # the decoder's aliases of the heads are dropped; BN counters added
    assert set(converted) == set(expected_names.values()) | {
        'backbone.layer2.0.bn1.num_batches_tracked'}
    for old, new in expected_names.items():
        assert converted[new] is original[old]
    assert deformable_detr_variant(original) == 'refine-twostage'
    # the same checkpoint through the loader's entry point
    via_loader = convert_original_checkpoint({'model': original, 'args': None}, 'x.pth')
    assert via_loader.keys() == converted.keys()


def test_variants_from_keys():
    refine_two_stage = two_stage_original()
    refine = {k: v for k, v in refine_two_stage.items()
              if not k.startswith(('transformer.enc_output', 'class_embed.6', 'bbox_embed.6'))}
    plain = {k: v for k, v in refine.items() if not k.startswith('transformer.decoder.')}
    assert deformable_detr_variant(refine_two_stage) == 'refine-twostage'
    assert deformable_detr_variant(refine) == 'refine'
    assert deformable_detr_variant(plain) == 'plain'


def test_coco80_keeps_the_two_stage_proposal_score():
    """The encoder branch ranks proposals by its output 0 (the original's
    ``torch.topk(enc_outputs_class[..., 0], topk, dim=1)``); --coco80 must not change it."""
    original = two_stage_original()
    converted = convert_deformable_detr(original, coco80=True)
    # decoder layers: COCO id i's row becomes class COCO80.index(i)
    for i in range(6):
        for name in ('weight', 'bias'):
            torch.testing.assert_close(converted[f'bbox_head.cls_branches.{i}.{name}'],
                                       original[f'class_embed.{i}.{name}'][COCO80], rtol=0, atol=0)
    # encoder branch: the original row 0 stays output 0, the class count is 80 as elsewhere
    enc_w = converted['bbox_head.cls_branches.6.weight']
    enc_b = converted['bbox_head.cls_branches.6.bias']
    assert enc_w.shape == (80, 8) and enc_b.shape == (80, )
    torch.testing.assert_close(enc_w[0], original['class_embed.6.weight'][0], rtol=0, atol=0)
    torch.testing.assert_close(enc_b[0], original['class_embed.6.bias'][0], rtol=0, atol=0)
    # the proposal ranking by the original's formula, with its weights and with ours
    memory = torch.randn(2, 1000, 8, generator=torch.Generator().manual_seed(0))
    original_logits = memory @ original['class_embed.6.weight'].T + original['class_embed.6.bias']
    our_logits = memory @ enc_w.T + enc_b
    original_top = torch.topk(original_logits[..., 0], 300, dim=1)[1]
    our_top = torch.topk(our_logits[..., 0], 300, dim=1)[1]
    assert torch.equal(original_top, our_top)


def test_detr_keys():
    original = {
        'backbone.0.body.layer4.2.bn3.running_var': t(4),
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
    converted = convert_detr(original)
    expected = {
        'backbone.layer4.2.bn3.running_var', 'backbone.layer4.2.bn3.num_batches_tracked',
        'neck.convs.0.conv.weight', 'neck.convs.0.conv.bias',
        'encoder.layers.5.self_attn.out_proj.weight', 'encoder.layers.5.ffn.linear1.weight',
        'decoder.layers.0.cross_attn.in_proj_bias', 'decoder.layers.0.norm3.bias',
        'decoder.norm.weight', 'query_embedding.weight', 'bbox_head.fc_cls.weight',
        'bbox_head.fc_cls.bias', 'bbox_head.fc_reg.layers.0.weight'}
    assert set(converted) == expected
    coco = convert_detr(original, coco80=True)
    rows = coco['bbox_head.fc_cls.bias']
    assert rows.shape == (81, )
    # class 11 of 80 is COCO id 13 (id 12 unused); no-object stays last
    assert rows[11] == original['class_embed.bias'][13]
    assert rows[80] == original['class_embed.bias'][91]


def test_unknown_keys_are_reported():
    with pytest.raises(KeyError, match='transformer.mystery'):
        convert_detr({'transformer.mystery.weight': t(2)})
    with pytest.raises(CheckpointError, match=r"'x.pth' looks like DETR but .*mystery"):
        convert_original_checkpoint({'model': {
            'transformer.decoder.layers.0.multihead_attn.in_proj_bias': t(3),
            'transformer.mystery.weight': t(2)}}, 'x.pth')


def run_cli(cli, monkeypatch, *argv) -> str:
    """The CLI's exit message (SystemExit's code) or '' when it succeeded."""
    monkeypatch.setattr('sys.argv', ['converter.py', *map(str, argv)])
    try:
        cli.main()
    except SystemExit as exit:
        return str(exit.code)
    return ''


def test_cli_converts_the_original_training_checkpoint(detr_cli, tmp_path, monkeypatch):
    """facebookresearch/detr's main.py saves model, optimizer, lr_scheduler, epoch and its
    argparse ``args``: read weights-only with Namespace allowed."""
    src, dst = tmp_path / 'detr.pth', tmp_path / 'out.pth'
    weights = {'class_embed.weight': t(92, 8), 'class_embed.bias': t(92),
               'transformer.decoder.layers.0.multihead_attn.in_proj_bias': t(24)}
    torch.save({'model': weights, 'optimizer': {'state': {}, 'param_groups': []},
                'lr_scheduler': {'step_size': 200, 'last_epoch': 3}, 'epoch': 3,
                'args': argparse.Namespace(lr=1e-4, backbone='resnet50', lr_drop=200)}, src)
    assert run_cli(detr_cli, monkeypatch, src, dst, '--coco80') == ''
    out = torch.load(dst, weights_only=True)
    torch.testing.assert_close(out['state_dict']['bbox_head.fc_cls.bias'],
                               weights['class_embed.bias'][COCO80 + [91]])
    assert out['meta']['converted_from'] == str(src)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker, ))


def test_cli_errors_are_one_line(detr_cli, ddetr_cli, tmp_path, monkeypatch):
    dst = tmp_path / 'out.pth'
    text = tmp_path / 'notes.txt'
    text.write_text('not a checkpoint\n')
    message = run_cli(detr_cli, monkeypatch, text, dst)
    assert 'notes.txt' in message and '\n' not in message

    missing = run_cli(detr_cli, monkeypatch, tmp_path / 'nothing.pth', dst)
    assert 'nothing.pth' in missing and 'does not exist' in missing

    # a checkpoint that would run code when unpickled is refused, and the code does not run
    marker = tmp_path / 'code_ran'
    evil = tmp_path / 'evil.pth'
    torch.save({'model': {'class_embed.bias': t(2)}, 'args': _RunsCode(str(marker))}, evil)
    refused = run_cli(detr_cli, monkeypatch, evil, dst)
    assert 'evil.pth' in refused and '\n' not in refused and not marker.exists()

    # another family, and another variant than the one asked for
    plain = {k: v for k, v in two_stage_original().items()
             if not k.startswith(('transformer.enc_output', 'class_embed.6', 'bbox_embed.6',
                                  'transformer.decoder.class', 'transformer.decoder.bbox'))}
    src = tmp_path / 'plain.pth'
    torch.save({'model': plain}, src)
    other = run_cli(detr_cli, monkeypatch, src, dst)
    assert 'looks like Deformable DETR, not DETR' in other
    variant = run_cli(ddetr_cli, monkeypatch, src, dst, '--variant', 'refine-twostage')
    assert 'looks like the plain Deformable DETR' in variant
    assert 'deformable-detr_r50_16xb2-50e_coco.py' in variant and not dst.exists()
    assert run_cli(ddetr_cli, monkeypatch, src, dst, '--variant', 'plain') == ''
    assert torch.load(dst, weights_only=True)['meta']['variant'] == 'plain'

    # a checkpoint converted already
    already = run_cli(ddetr_cli, monkeypatch, dst, tmp_path / 'again.pth')
    assert 'holds no original Deformable DETR weights' in already and 'state_dict' in already


def test_not_an_original_layout_gives_none():
    assert convert_original_checkpoint({'state_dict': {'backbone.conv1.weight': t(1)},
                                        'meta': {}}, 'ours.pth') is None
    assert convert_original_checkpoint({'backbone.stem.0.weight': t(1)}, 'ours.pth') is None
    with pytest.raises(CheckpointError, match="training checkpoint but has no weights"):
        convert_original_checkpoint({'args': argparse.Namespace(), 'epoch': 3}, 'x.pth')
