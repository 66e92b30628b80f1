"""The D-FINE and DEIM-D-FINE COCO configs against the originals: their settings against a table
written by hand from the YAMLs (Peterande/D-FINE configs/dfine/*.yml with include/, and
ShihuaHuang95/DEIM configs/deim_dfine/deim_hgnetv2_*.yml over dfine_hgnetv2_*_coco.yml and
base/), parameter counts against the original models built from those YAMLs, and every trainable
tensor's learning rate and weight decay against the original's regex groups applied to the
original's parameter names (tests/data/dfine/original_models.json, written by its
make_fixtures.py from the original code)."""
import json
import pathlib
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

from detr_plugin.converters.dfine import convert_dfine
from detr_plugin.registry import MODELS, PARAM_SCHEDULERS, TRANSFORMS

ROOT = pathlib.Path(__file__).resolve().parents[2]
ORIGINAL_MODELS = json.loads((ROOT / 'tests/data/dfine/original_models.json').read_text())

# model of each size (the YAMLs' HGNetv2, HybridEncoder and DFINETransformer sections):
# backbone (name, return_idx, use_lab, frozen stem + frozen norm in D-FINE), encoder
# (in_channels, hidden_dim, dim_feedforward, use_encoder_idx, expansion, depth_mult), decoder
# (feat_channels, hidden_dim, dim_feedforward, num_points, num_layers, eval_idx, reg_max, reg_scale)
SIZES = {
    'n': dict(arch='B0', out_indices=(2, 3), use_lab=True, frozen=False,
              neck=([512, 1024], 128, 512, [1], 0.34, 0.5),
              decoder=([128, 128], 128, 512, [6, 6], 3, -1, 32, 4.0)),
    's': dict(arch='B0', out_indices=(1, 2, 3), use_lab=True, frozen=False,
              neck=([256, 512, 1024], 256, 1024, [2], 0.5, 0.34),
              decoder=([256, 256, 256], 256, 1024, [3, 6, 3], 3, -1, 32, 4.0)),
    'm': dict(arch='B2', out_indices=(1, 2, 3), use_lab=True, frozen=False,
              neck=([384, 768, 1536], 256, 1024, [2], 1.0, 0.67),
              decoder=([256, 256, 256], 256, 1024, [3, 6, 3], 4, -1, 32, 4.0)),
    'l': dict(arch='B4', out_indices=(1, 2, 3), use_lab=False, frozen=True,
              neck=([512, 1024, 2048], 256, 1024, [2], 1.0, 1.0),
              decoder=([256, 256, 256], 256, 1024, [3, 6, 3], 6, -1, 32, 4.0)),
    'x': dict(arch='B5', out_indices=(1, 2, 3), use_lab=False, frozen=True,
              neck=([512, 1024, 2048], 384, 2048, [2], 1.0, 1.0),
              decoder=([384, 384, 384], 256, 1024, [3, 6, 3], 6, -1, 32, 8.0)),
}

# the YAMLs' optimizer params regexes, as written there
DFINE_NSM = ['^(?=.*backbone)(?!.*norm|bn).*$', '^(?=.*backbone)(?=.*norm|bn).*$',
             '^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$']
DFINE_LX = ['^(?=.*backbone)(?!.*norm|bn).*$', '^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$']
DEIM_SM = ['^(?=.*backbone)(?!.*bn).*$', '^(?=.*(?:norm|bn)).*$']


def groups(patterns, backbone_lr):
    """[(regex, lr or None, weight decay or None)]: each YAML's groups are (regex, backbone lr)
    for the backbone ones and weight decay 0 for every other, the first two of D-FINE N/S/M
    both at the backbone lr (the second also without decay)."""
    out = []
    for i, pattern in enumerate(patterns):
        is_backbone = pattern.startswith('^(?=.*backbone)')
        zero_decay = not (is_backbone and i == 0)
        out.append((pattern, backbone_lr if is_backbone else None, 0.0 if zero_decay else None))
    return out


# config: size, family, epochs, stop epoch (D-FINE's policy.epoch / collate stop_epoch; DEIM's
# third policy epoch), DEIM's (Mosaic/MixUp start and stop: policy epochs / mixup_epochs,
# flat_epoch, no_aug_epoch, lr_gamma), base_size_repeat (None: no multi-scale), total batch, lr,
# weight decay, groups
ORIGINAL = {
    'dfine/dfine_hgnetv2-n_8xb16-160e_coco':
        ('n', 'dfine', 160, 148, None, None, 128, 8e-4, 1e-4, groups(DFINE_NSM, 4e-4)),
    'dfine/dfine_hgnetv2-s_8xb4-132e_coco':
        ('s', 'dfine', 132, 120, None, 20, 32, 2e-4, 1e-4, groups(DFINE_NSM, 1e-4)),
    'dfine/dfine_hgnetv2-m_8xb4-132e_coco':
        ('m', 'dfine', 132, 120, None, 6, 32, 2e-4, 1e-4, groups(DFINE_NSM, 2e-5)),
    'dfine/dfine_hgnetv2-l_8xb4-80e_coco':
        ('l', 'dfine', 80, 72, None, 4, 32, 2.5e-4, 1.25e-4, groups(DFINE_LX, 1.25e-5)),
    'dfine/dfine_hgnetv2-x_8xb4-80e_coco':
        ('x', 'dfine', 80, 72, None, 3, 32, 2.5e-4, 1.25e-4, groups(DFINE_LX, 2.5e-6)),
    'deim/deim_dfine_hgnetv2-n_8xb16-160e_coco':
        ('n', 'deim', 160, 148, (4, 78, 7800, 12, 1.0), None, 128, 8e-4, 1e-4,
         groups(DFINE_NSM, 4e-4)),
    'deim/deim_dfine_hgnetv2-s_8xb4-132e_coco':
        ('s', 'deim', 132, 120, (4, 64, 64, 12, 0.5), 20, 32, 4e-4, 1e-4, groups(DEIM_SM, 2e-4)),
    'deim/deim_dfine_hgnetv2-m_8xb4-102e_coco':
        ('m', 'deim', 102, 90, (4, 49, 49, 12, 0.5), 6, 32, 4e-4, 1e-4, groups(DEIM_SM, 4e-5)),
    'deim/deim_dfine_hgnetv2-l_8xb4-58e_coco':
        ('l', 'deim', 58, 50, (4, 29, 29, 8, 0.5), 3, 32, 5e-4, 1.25e-4, groups(DFINE_LX, 2.5e-5)),
    'deim/deim_dfine_hgnetv2-x_8xb4-58e_coco':
        ('x', 'deim', 58, 50, (4, 29, 29, 8, 0.5), 3, 32, 5e-4, 1.25e-4, groups(DFINE_LX, 5e-6)),
}


def config(name: str) -> Config:
    return Config.fromfile(str(ROOT / 'configs' / f'{name}.py'))


def multi_scale_sizes(base_size_repeat):
    """The originals' generate_scales(640, base_size_repeat) written out."""
    return [480, 512, 544, 576, 608] + [640] * base_size_repeat + [800, 768, 736, 704, 672]


def test_every_config_is_in_the_table():
    names = {f'{p.parent.name}/{p.stem}'
             for d in ('dfine', 'deim') for p in (ROOT / 'configs' / d).glob('*_coco.py')}
    assert names == set(ORIGINAL)


@pytest.mark.parametrize('name', sorted(ORIGINAL))
def test_model_settings_are_the_originals(name):
    size, family = ORIGINAL[name][:2]
    spec = SIZES[size]
    model = config(name).model
    backbone, neck, decoder, head = model.backbone, model.neck, model.decoder, model.bbox_head
    assert (backbone.type, backbone.arch, tuple(backbone.out_indices), backbone.use_lab) == (
        'HGNetv2', spec['arch'], spec['out_indices'], spec['use_lab'])
    frozen = spec['frozen'] and family == 'dfine'  # deim.yml: freeze_at -1, freeze_norm False
    assert backbone.frozen_stages == (0 if frozen else -1)
    assert backbone.norm_cfg.type == ('FrozenBatchNorm2d' if frozen else 'BN')
    assert backbone.init_cfg.checkpoint == f"hgnetv2://{spec['arch']}"
    assert (neck.type, neck.in_channels, neck.embed_dims, neck.ffn_dims, neck.encoder_levels,
            neck.expansion, neck.depth_mult) == ('DFineHybridEncoder', *spec['neck'])
    in_channels, dims, ffn, points, layers, eval_idx, reg_max, reg_scale = spec['decoder']
    assert (decoder.type, decoder.in_channels, decoder.embed_dims, decoder.layer_cfg.ffn_dims,
            decoder.layer_cfg.num_points, decoder.num_layers) == (
                'DFINEDecoder', in_channels, dims, ffn, points, layers)
    assert decoder.get('layer_cfg', {}).get('num_levels', 3) == len(in_channels)
    assert (head.type, head.embed_dims, head.eval_idx, head.reg_max, head.reg_scale) == (
        'DFINEHead', dims, eval_idx, reg_max, reg_scale)
    assert decoder.num_queries == 300 and model.denoising.num_denoising == 100
    # DEIM: activation / mlp_act silu and MAL with gamma 1.5 (deim.yml); D-FINE: relu and VFL
    act = 'silu' if family == 'deim' else 'relu'
    assert (decoder.layer_cfg.act, decoder.get('mlp_act', 'relu'), head.get('mlp_act', 'relu'),
            head.get('lqe_act', 'relu')) == (act, ) * 4
    if family == 'deim':
        assert (head.loss_cls.type, head.loss_cls.gamma, head.loss_cls_name) == (
            'MatchabilityAwareLoss', 1.5, 'loss_mal')
    else:
        assert (head.loss_cls.type, head.loss_cls.alpha, head.loss_cls.gamma) == (
            'RTDETRVarifocalLoss', 0.75, 2.0)
    assert (head.loss_fgl.loss_weight, head.loss_ddf.loss_weight, head.loss_ddf.temperature) == (
        0.15, 1.5, 5.0)


@pytest.mark.parametrize('name', sorted(ORIGINAL))
def test_recipe_settings_are_the_originals(name):
    (size, family, epochs, stop, deim, repeat, batch, lr, wd, groups_) = ORIGINAL[name]
    cfg = config(name)
    assert cfg.train_cfg.max_epochs == epochs
    assert cfg.train_dataloader.batch_size * 8 == batch == cfg.auto_scale_lr.base_batch_size
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.weight_decay, optimizer.betas) == (
        'AdamW', lr, wd, (0.9, 0.999))
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=0.1, norm_type=2)
    # the backbone's rate (every tensor's group: test_built_model_and_groups_are_the_originals)
    backbone_lr = groups_[0][1]
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys.backbone.lr_mult * lr == \
        pytest.approx(backbone_lr, rel=1e-12)
    ema, = [h for h in cfg.custom_hooks if h.type == 'EMAHook']
    assert (ema.ema_type, ema.momentum, ema.gamma) == ('ForeachExpMomentumEMA', 1e-4, 1000)
    assert cfg.default_hooks.restart_from_best.epoch == stop
    assert cfg.default_hooks.checkpoint.save_best == 'coco/bbox_mAP'
    augments = cfg.model.data_preprocessor.get('batch_augments') or []
    resize = [a for a in augments if a.type == 'BatchMultiScaleResize']
    assert [a.sizes for a in resize] == ([multi_scale_sizes(repeat)] if repeat else [])
    windows = cfg.default_hooks.augmentation_window.windows
    dataset = cfg.train_dataloader.dataset  # DEIM: MultiImageMixDataset around the COCO dataset
    transforms = dataset.pipeline + dataset.get('dataset', {}).get('pipeline', [])
    # a window names a transform or one of its bases (Expand for ZeroFillExpand), as the hook
    types = {cls.__name__ for t in transforms for cls in TRANSFORMS.get(t.type).__mro__}
    assert set(windows) <= types | {a.type for a in augments}
    scale_window = {'BatchMultiScaleResize': (0, stop)} if repeat else {}
    if family == 'dfine':
        assert windows == dict(PhotoMetricDistortion=(0, stop), Expand=(0, stop),
                               RandomIoUCrop=(0, stop), **scale_window)
        assert cfg.param_scheduler == [dict(type='LinearLR', start_factor=1 / 500,
                                            by_epoch=False, begin=0, end=500)]
        return
    start, mix_stop, flat, no_aug, gamma = deim
    assert windows == dict(Mosaic=(start, mix_stop), BatchMixUp=(start, mix_stop),
                           PhotoMetricDistortion=(start, stop), SkipAfterMosaic=(start, stop),
                           **scale_window)
    assert [a.type for a in augments][0] == 'BatchMixUp'
    scheduler, = cfg.param_scheduler
    assert (scheduler.type, scheduler.end, scheduler.warmup_iters, scheduler.flat_end,
            scheduler.final_steps, scheduler.lr_gamma) == (
                'FlatCosineLR', epochs, 2000, flat, no_aug, gamma)


def test_dfine_warm_up_is_the_originals():
    """LinearWarmup(warmup_duration=500): iteration k (0-based) at min(1, (k + 1) / 500)."""
    cfg = config('dfine/dfine_hgnetv2-s_8xb4-132e_coco')
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2e-4)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optimizer))
                  for s in cfg.param_scheduler]
    for k in range(520):
        assert optimizer.param_groups[0]['lr'] == pytest.approx(2e-4 * min(1, (k + 1) / 500),
                                                                rel=1e-9), k
        optimizer.step()
        for scheduler in schedulers:
            scheduler.step()


def build_model(cfg: Config) -> torch.nn.Module:
    cfg.model.backbone.init_cfg = None  # no download
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        return MODELS.build(cfg.model)


# built fully (the others are checked above from their config dicts): the parameter count
# against the original's (ORIGINAL_MODELS['num_params'], from the original code), and the groups
BUILT = {'dfine/dfine_hgnetv2-s_8xb4-132e_coco': ('dfine_s', 'dfine_s'),
         'dfine/dfine_hgnetv2-n_8xb16-160e_coco': ('dfine_n', 'dfine_n'),
         'dfine/dfine_hgnetv2-l_8xb4-80e_coco': ('dfine_l', 'dfine_l'),
         'deim/deim_dfine_hgnetv2-s_8xb4-132e_coco': ('deim_s', 'dfine_s'),
         'deim/deim_dfine_hgnetv2-n_8xb16-160e_coco': ('deim_n', 'dfine_n'),
         'deim/deim_dfine_hgnetv2-l_8xb4-58e_coco': ('deim_l', 'deim_l')}


def original_settings(names, lr, wd, groups):
    """{original name: (lr, weight decay)} as the original's get_optim_params groups them: each
    name in the group whose regex finds it (never two), else in the default group."""
    settings = {}
    for name in names:
        found = [g for g in groups if re.findall(g[0], name)]
        assert len(found) <= 1, (name, found)  # the original would put it in two groups
        _, group_lr, group_wd = found[0] if found else (None, None, None)
        settings[name] = (lr if group_lr is None else group_lr,
                          wd if group_wd is None else group_wd)
    return settings


def our_name(original: str) -> str:
    """Our name of an original parameter, by the converter's rules."""
    converted = [k for k in convert_dfine({original: torch.zeros(1)})
                 if not k.endswith('num_batches_tracked')]
    assert len(converted) == 1, (original, converted)
    return converted[0]


@pytest.mark.parametrize('name', sorted(BUILT))
def test_built_model_and_groups_are_the_originals(name):
    model_key, names_key = BUILT[name]
    *_, lr, wd, groups = ORIGINAL[name]
    cfg = config(name)
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == \
        ORIGINAL_MODELS['num_params'][model_key]
    original = original_settings(ORIGINAL_MODELS['trainable'][names_key], lr, wd, groups)
    expected = {our_name(k): v for k, v in original.items()}
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    ids = {id(p): n for n, p in model.named_parameters()}
    settings = {ids[id(p)]: (g['lr'], g['weight_decay'])
                for g in optimizer.param_groups for p in g['params'] if p.requires_grad}
    assert set(settings) == set(expected)  # the same tensors train (frozen stem, norms)
    wrong = {n: (settings[n], expected[n]) for n in settings
             if settings[n] != pytest.approx(expected[n], rel=1e-12, abs=0)}
    assert not wrong, f'{len(wrong)} tensors, e.g. {list(wrong.items())[:3]}'
