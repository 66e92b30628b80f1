"""tools/model_converters/{dfine,deim}_to_plugin.py and the on-the-fly conversion of D-FINE / DEIM
checkpoints, on a synthetic checkpoint with the original D-FINE S's names and shapes
(tests/data/dfine/original_models.json, from the original code): the converted weights load
strictly into the model of configs/dfine/dfine_hgnetv2-s_8xb4-132e_coco.py; fine-tuning from it
with another class count re-initialises exactly the class heads."""
import json
import pathlib

import pytest
import torch
from mmengine.config import Config

from detr_plugin.converters import convert_original_checkpoint, original_family
from detr_plugin.converters.dfine import convert_dfine
from detr_plugin.engine.hooks.checkpoint_check_hook import CheckpointCheckHook
from detr_plugin.models.layers.frozen_batch_norm import FrozenBatchNorm2d
from detr_plugin.registry import MODELS
from detr_plugin.utils import CheckpointError, load_detector_checkpoint
from detr_plugin.utils.checkpoint_loading import Weights, fit_to_model

ROOT = pathlib.Path(__file__).resolve().parents[2]
ORIGINAL_S = json.loads((ROOT / 'tests/data/dfine/original_models.json').read_text())[
    'dfine_s_state_dict']
CONFIG_S = ROOT / 'configs/dfine/dfine_hgnetv2-s_8xb4-132e_coco.py'
# original keys with no counterpart of ours: buffers recomputed from the image size, the
# decoder's second reference to up / reg_scale, the attention's 1 / points per level (a constant
# of the config's num_points)
DROPPED = {'decoder.anchors', 'decoder.valid_mask', 'decoder.decoder.up',
           'decoder.decoder.reg_scale'} | {
               f'decoder.decoder.layers.{i}.cross_attn.num_points_scale' for i in range(3)}
# original -> ours, written from the two models' module trees
KEYS = {
    'backbone.stem.stem1.conv.weight': 'backbone.stem.stem1.conv.weight',
    'backbone.stages.0.blocks.0.layers.0.conv.weight':
        'backbone.stages.0.blocks.0.layers.0.conv.weight',
    'encoder.input_proj.1.conv.weight': 'neck.input_proj.1.0.weight',
    'encoder.input_proj.2.norm.running_var': 'neck.input_proj.2.1.running_var',
    'encoder.encoder.0.layers.0.linear1.weight': 'neck.encoder.0.layers.0.ffn.linear1.weight',
    'decoder.decoder.layers.2.norm3.bias': 'decoder.layers.2.norm3.bias',
    'decoder.decoder.layers.1.linear2.weight': 'decoder.layers.1.ffn.linear2.weight',
    'decoder.decoder.lqe_layers.2.reg_conf.layers.1.bias': 'bbox_head.lqe_branches.2.layers.1.bias',
    'decoder.up': 'bbox_head.up',
    'decoder.reg_scale': 'bbox_head.reg_scale',
    'decoder.dec_score_head.1.weight': 'bbox_head.cls_branches.1.weight',
    'decoder.dec_bbox_head.0.layers.2.bias': 'bbox_head.reg_branches.0.layers.2.bias',
    'decoder.pre_bbox_head.layers.0.weight': 'bbox_head.pre_reg_branch.layers.0.weight',
    'decoder.enc_score_head.bias': 'bbox_head.enc_cls_branch.bias',
    'decoder.enc_output.norm.weight': 'decoder.enc_output.1.weight',
    'decoder.denoising_class_embed.weight': 'denoising.label_embed.weight',
}
# what another class count changes: every layer's class head, the encoder's, the denoising
# class embedding (num_classes + 1 rows); D-FINE S has 3 decoder layers
CLASS_HEADS = {f'bbox_head.cls_branches.{i}.{p}' for i in range(3) for p in ('weight', 'bias')} | {
    'bbox_head.enc_cls_branch.weight', 'bbox_head.enc_cls_branch.bias',
    'denoising.label_embed.weight'}


def original_state(offset: float) -> dict:
    """D-FINE S's state dict with tensor i filled with i + offset (expanded from one element,
    so the file stays small), counters as integers."""
    state = {}
    for i, (key, shape) in enumerate(ORIGINAL_S):
        if key.endswith('num_batches_tracked'):
            state[key] = torch.tensor(i)
        else:
            state[key] = torch.full((), i + offset).expand(shape)
    return state


def value_of(tensor: torch.Tensor) -> float:
    return tensor.flatten()[0].item() if tensor.numel() else float('nan')


@pytest.fixture(scope='module')
def training_checkpoint(tmp_path_factory) -> pathlib.Path:
    """As the originals' solvers save: model, EMA with its update count, epoch, date."""
    path = tmp_path_factory.mktemp('dfine') / 'dfine_s_coco.pth'
    torch.save({'date': '2024-10-01T00:00:00', 'last_epoch': 131, 'model': original_state(0.0),
                'ema': {'module': original_state(0.5), 'updates': 1000}}, path)
    return path


def build(num_classes: int) -> torch.nn.Module:
    cfg = Config.fromfile(str(CONFIG_S))
    cfg.model.backbone.init_cfg = None
    cfg.model.bbox_head.num_classes = num_classes
    torch.manual_seed(0)
    return MODELS.build(cfg.model)  # the modules' own initialisation: what fine-tuning keeps


@pytest.fixture(scope='module')
def dfine_s():
    return build(80)


def run_cli(cli, monkeypatch, *argv) -> str:
    monkeypatch.setattr('sys.argv', ['dfine_to_plugin.py', *map(str, argv)])
    try:
        cli.main()
    except SystemExit as exit:
        return str(exit.code)
    return ''


@pytest.mark.parametrize('tool', ['dfine_to_plugin.py', 'deim_to_plugin.py'])
def test_cli_output_loads_strictly_into_the_config_model(tool, load_tool, dfine_s,
                                                         training_checkpoint, tmp_path,
                                                         monkeypatch, capsys):
    cli = load_tool(f'tools/model_converters/{tool}')
    dst = tmp_path / 'dst.pth'
    assert run_cli(cli, monkeypatch, training_checkpoint, dst) == ''
    printed = capsys.readouterr().out
    assert "(3 decoder layers, 80 classes, encoder 256 / decoder 256 wide), its 'ema'" in printed
    out = torch.load(dst, weights_only=True)
    assert out['meta']['weights'] == 'ema'
    state = out['state_dict']
    dfine_s.load_state_dict(state, strict=True)  # every name and shape of the config's model
    original = dict(original_state(0.5))
    for key, ours in KEYS.items():
        assert value_of(state[ours]) == value_of(original[key]), key
    # each original tensor lands once (its value names it), the dropped ones nowhere
    landed = sorted(value_of(v) for k, v in state.items() if not k.endswith('batches_tracked'))
    expected = sorted(value_of(v) for k, v in original.items()
                      if k not in DROPPED and not k.endswith('batches_tracked'))
    assert landed == expected


def test_cli_layouts_and_one_line_errors(load_tool, training_checkpoint, tmp_path, monkeypatch):
    cli = load_tool('tools/model_converters/dfine_to_plugin.py')
    dst = tmp_path / 'dst.pth'
    assert run_cli(cli, monkeypatch, training_checkpoint, dst, '--no-ema') == ''
    out = torch.load(dst, weights_only=True)
    assert out['meta']['weights'] == 'model'
    assert value_of(out['state_dict']['bbox_head.up']) == value_of(
        original_state(0.0)['decoder.up'])

    model_only = tmp_path / 'model_only.pth'
    torch.save({'model': original_state(0.0), 'last_epoch': 3}, model_only)
    message = run_cli(cli, monkeypatch, model_only, dst, '--ema')
    assert "no weights under 'ema' -> 'module'" in message and 'model_only.pth' in message
    no_weights = tmp_path / 'optimizer_only.pth'
    torch.save({'optimizer': {}, 'last_epoch': 3}, no_weights)
    message = run_cli(cli, monkeypatch, no_weights, dst)
    assert "no weights under 'model' or 'ema'" in message and 'optimizer_only.pth' in message
    rtdetr = tmp_path / 'rtdetr.pth'
    torch.save({'ema': {'module': {'decoder.dec_score_head.0.bias': torch.zeros(80)}}}, rtdetr)
    message = run_cli(cli, monkeypatch, rtdetr, dst)
    assert 'looks like RT-DETR, not D-FINE' in message and 'rtdetr.pth' in message
    assert '\n' not in message


def test_loader_recognises_dfine_before_rtdetr_v2():
    state = original_state(0.5)
    assert original_family(state) == 'D-FINE'  # it also has RT-DETRv2's num_points_scale
    converted = convert_original_checkpoint({'ema': {'module': state}}, 'x.pth')
    assert value_of(converted['bbox_head.reg_scale']) == value_of(state['decoder.reg_scale'])


def test_finetuning_from_the_original_checkpoint_reinitialises_only_class_heads(
        training_checkpoint, demo_runs):
    """load_from of a 3-class D-FINE S with the original 80-class checkpoint, as the Runner does
    it (CheckpointCheckHook sees the file's contents first and converts them)."""
    mine = build(3)
    fresh = {k: v.clone() for k, v in mine.state_dict().items() if k in CLASS_HEADS}
    runner = demo_runs.fake_runner(mine, str(training_checkpoint))
    checkpoint = torch.load(training_checkpoint, weights_only=True)
    CheckpointCheckHook(partial=True).after_load_checkpoint(runner, checkpoint)
    mine.load_state_dict(checkpoint['state_dict'], strict=True)  # as the Runner does next
    converted = convert_original_checkpoint(torch.load(training_checkpoint, weights_only=True),
                                            'x.pth')
    for key, value in mine.state_dict().items():
        expected = fresh[key] if key in CLASS_HEADS else converted[key]
        assert torch.equal(value, expected.expand_as(value)), key
    [line] = runner.logger.handlers[0].lines
    assert line.startswith('fine-tuning: ') and '\n' not in line
    assert f'{len(CLASS_HEADS)} keys of another shape' in line
    assert str(training_checkpoint) in line


def test_finetuning_a_demo_size_dfine_from_an_80_class_checkpoint(tmp_path):
    """The demo-size D-FINE (configs/dfine/dfine_r18vd_1xb8-demo.py), 80 classes -> 3, through
    the tools' loader: the same class heads start fresh, one warning line."""
    cfg = Config.fromfile(str(ROOT / 'configs/dfine/dfine_r18vd_1xb8-demo.py'))
    models = {}
    for num_classes, seed in ((80, 0), (3, 1)):
        cfg.model.bbox_head.num_classes = num_classes
        torch.manual_seed(seed)
        models[num_classes] = MODELS.build(cfg.model)
    path = tmp_path / 'coco80.pth'
    torch.save({'state_dict': models[80].state_dict(), 'meta': {}}, path)
    fresh = {k: v.clone() for k, v in models[3].state_dict().items()}
    with pytest.warns(UserWarning) as record:
        load_detector_checkpoint(models[3], str(path), partial=True)
    [warning] = record
    assert '\n' not in str(warning.message) and 'coco80.pth' in str(warning.message)
    layers = cfg.model.decoder.num_layers
    heads = {f'bbox_head.cls_branches.{i}.{p}' for i in range(layers) for p in ('weight', 'bias')}
    heads |= {'bbox_head.enc_cls_branch.weight', 'bbox_head.enc_cls_branch.bias',
              'denoising.label_embed.weight'}
    source = models[80].state_dict()
    for key, value in models[3].state_dict().items():
        assert torch.equal(value, fresh[key] if key in heads else source[key]), key


def test_frozen_batchnorm_checkpoints_fit_without_counters():
    """D-FINE L/X freeze the backbone's BatchNorms (no num_batches_tracked in the original or in
    our FrozenBatchNorm2d); the converter adds counters for mmdet's BatchNorm layout. The check
    passes over a counter only where the model has that layer without one."""
    model = torch.nn.Sequential(FrozenBatchNorm2d(2), torch.nn.BatchNorm2d(2))
    converted = convert_dfine({'backbone.stem.stem1.bn.running_var': torch.full((2, ), 2.)})
    assert 'backbone.stem.stem1.bn.num_batches_tracked' in converted
    state = {f'0.{k}': v for k, v in model[0].state_dict().items()}
    state.update({'0.num_batches_tracked': torch.tensor(0), '0.running_var': torch.full((2, ), 2.)})
    state.update({f'1.{k}': v for k, v in model[1].state_dict().items()})
    fitted = fit_to_model(model, Weights(state, {}), 'l.pth', partial=False)
    assert fitted.skipped is None and '0.num_batches_tracked' not in fitted.state_dict
    model.load_state_dict(fitted.state_dict, strict=True)
    assert torch.equal(model[0].running_var, torch.full((2, ), 2.))
    # a counter the model's BatchNorm needs is still missing without it; one of no layer is extra
    del state['1.num_batches_tracked']
    state['2.num_batches_tracked'] = torch.tensor(0)
    with pytest.raises(CheckpointError, match=r'missing keys \[1.num_batches_tracked\].*'
                                              r'unexpected keys \[2.num_batches_tracked\]'):
        fit_to_model(model, Weights(state, {}), 'l.pth', partial=False)
