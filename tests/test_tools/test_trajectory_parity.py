"""tools/analysis/trajectory_parity.py: the optimizer settings, learning-rate schedule and weight
average it builds from the R18 configs, against the original rtdetr_pytorch's and
rtdetrv2_pytorch's rules written out by hand (their R18 YAMLs' AdamW regex groups, v2's
LinearWarmup and the ModelEMA formula)."""
import math
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from torch import nn

from mmengine.registry import DefaultScope

from detr_plugin.registry import MODELS

CONFIG = 'configs/rtdetr/rtdetr_r18vd_8xb2-72e_coco.py'
CONFIG_V2 = 'configs/rtdetrv2/rtdetrv2_r18vd_8xb2-120e_coco.py'

# rtdetr_r18vd_6x_coco.yml: lr 1e-4, weight decay 1e-4, and the groups
#   '^(?=.*backbone)(?=.*norm).*$'                      lr 1e-5, weight decay 0
#   '^(?=.*backbone)(?!.*norm).*$'                      lr 1e-5
#   '^(?=.*(?:encoder|decoder))(?=.*(?:norm|bias)).*$'  weight decay 0
# applied to the original's names (in the comments), by hand: (our name, lr, weight decay)
AGREE = [
    ('backbone.layer1.0.conv1.weight', 1e-5, 1e-4),  # backbone.res_layers.0.blocks.0.branch2a.conv
    ('neck.encoder.0.layers.0.self_attn.in_proj_weight', 1e-4, 1e-4),
    ('neck.encoder.0.layers.0.norm1.weight', 1e-4, 0.0),
    ('neck.input_proj.0.1.bias', 1e-4, 0.0),  # encoder.input_proj.0.1.bias: 'bias'
    ('decoder.input_proj.0.norm.weight', 1e-4, 0.0),
    ('decoder.query_pos_head.layers.0.bias', 1e-4, 0.0),
    ('decoder.layers.0.cross_attn.sampling_offsets.bias', 1e-4, 0.0),
    ('bbox_head.cls_branches.0.weight', 1e-4, 1e-4),  # decoder.dec_score_head.0.weight
    ('denoising.label_embed.weight', 1e-4, 1e-4),  # decoder.denoising_class_embed.weight
]
# where mmengine's default rules (custom key 'backbone' switches its norm / bias rules off; they
# go by module type and the exact name 'bias', the original's regexes by substrings) gave another
# weight decay than the original; the config's custom keys now follow the original
# (docs/parity.md, "Training trajectory")
AGREE += [
    ('backbone.layer1.0.bn1.weight', 1e-5, 0.0),  # ...branch2a.norm.weight: backbone + norm
    ('backbone.stem.1.bias', 1e-5, 0.0),  # backbone.conv1.conv1_1.norm.bias
    ('neck.encoder.0.layers.0.self_attn.in_proj_bias', 1e-4, 0.0),  # 'bias' in the name
    ('decoder.layers.0.self_attn.in_proj_bias', 1e-4, 0.0),
    ('neck.input_proj.0.1.weight', 1e-4, 1e-4),  # BatchNorm named '1': neither norm nor bias
    ('decoder.enc_output.1.weight', 1e-4, 1e-4),  # LayerNorm named '1'
]


# rtdetrv2_r18vd_120e_coco.yml: lr 1e-4, weight decay 1e-4; its one group (it replaces the
# included optimizer.yml's list) '^(?=.*(?:norm|bn)).*$' weight decay 0. v2 names every norm
# layer 'norm' (v1's numbered BatchNorm and LayerNorm too) and nothing else holds 'norm' or 'bn'
AGREE_V2 = [
    ('backbone.layer1.0.conv1.weight', 1e-4, 1e-4),  # backbone...branch2a.conv.weight
    ('backbone.layer1.0.bn1.weight', 1e-4, 0.0),  # backbone...branch2a.norm.weight
    ('backbone.stem.1.bias', 1e-4, 0.0),  # backbone.conv1.conv1_1.norm.bias
    ('neck.encoder.0.layers.0.self_attn.in_proj_bias', 1e-4, 1e-4),  # decays in v2
    ('neck.encoder.0.layers.0.norm1.weight', 1e-4, 0.0),
    ('neck.input_proj.0.1.weight', 1e-4, 0.0),  # encoder.input_proj.0.norm.weight
    ('neck.input_proj.0.0.weight', 1e-4, 1e-4),  # encoder.input_proj.0.conv.weight
    ('decoder.enc_output.1.weight', 1e-4, 0.0),  # decoder.enc_output.norm.weight
    ('decoder.layers.0.cross_attn.sampling_offsets.bias', 1e-4, 1e-4),
    ('bbox_head.cls_branches.0.bias', 1e-4, 1e-4),  # decoder.dec_score_head.0.bias
    ('denoising.label_embed.weight', 1e-4, 1e-4),
]


@pytest.fixture(scope='module')
def tool(load_tool):
    return load_tool('tools/analysis/trajectory_parity.py')


def build_settings(tool, config: str) -> dict:
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope('detr_plugin'):  # built before the autouse scope
        model = MODELS.build(cfg.model)
        return tool.group_settings(model, build_optim_wrapper(model, cfg.optim_wrapper))


@pytest.fixture(scope='module')
def settings(tool, repo_root):
    return {CONFIG: build_settings(tool, str(repo_root / CONFIG)),
            CONFIG_V2: build_settings(tool, str(repo_root / CONFIG_V2))}


@pytest.mark.parametrize('config,name,lr,weight_decay',
                         [(CONFIG, *row) for row in AGREE]
                         + [(CONFIG_V2, *row) for row in AGREE_V2])
def test_optimizer_settings_follow_original_groups(settings, config, name, lr, weight_decay):
    setting = settings[config][name]
    assert setting['lr'] == pytest.approx(lr, rel=1e-12)
    assert setting['weight_decay'] == pytest.approx(weight_decay, rel=1e-12, abs=0)
    assert setting['betas'] == (0.9, 0.999) and setting['eps'] == 1e-8


def test_schedulers_give_the_original_warm_up(tool, repo_root):
    """The v2 config's schedulers as the tool builds and steps them, against LinearWarmup
    (warmup_duration 2000): step k (0-based) at min(1, (k + 1) / 2000) of the learning rate; the
    v1 config has none."""
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-4)
    assert tool.build_schedulers(Config.fromfile(str(repo_root / CONFIG)), optimizer) == []
    schedulers = tool.build_schedulers(Config.fromfile(str(repo_root / CONFIG_V2)), optimizer)
    for k in range(2010):
        assert optimizer.param_groups[0]['lr'] == pytest.approx(1e-4 * min(1, (k + 1) / 2000),
                                                                rel=1e-12), k
        for scheduler in schedulers:
            scheduler.step()


def test_group_differences_names_the_setting(tool):
    theirs = {'decoder.dec_score_head.0.weight': dict(lr=1e-4, weight_decay=1e-4,
                                                      betas=(0.9, 0.999), eps=1e-8),
              'decoder.dec_score_head.0.bias': dict(lr=1e-4, weight_decay=0.0,
                                                    betas=(0.9, 0.999), eps=1e-8)}
    ours = {'bbox_head.cls_branches.0.weight': dict(lr=1e-4, weight_decay=0.0,
                                                    betas=(0.9, 0.999), eps=1e-8),
            'bbox_head.cls_branches.0.bias': dict(theirs['decoder.dec_score_head.0.bias']),
            'bbox_head.extra': dict(lr=1e-4, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)}
    assert tool.group_differences(theirs, ours) == [
        ('decoder.dec_score_head.0.weight', 'bbox_head.cls_branches.0.weight', 'weight_decay',
         '0.0001', '0.0'),
        ('-', 'bbox_head.extra', 'trained', 'False', 'True')]


def original_decay(update: int) -> float:
    """ModelEMA(decay=0.9999, warmups=2000): the weight the average keeps at update k (1-based)."""
    return 0.9999 * (1 - math.exp(-update / 2000))


def test_ema_follows_original_formula(tool, repo_root):
    """The config's EMAHook average against ModelEMA's recursion a_k = d_k a_{k-1} + (1 - d_k) w_k,
    from the second update on; the first differs by d_1 (a_0 - w_1): ours starts as a copy of the
    model after its first step, the original's as a copy before it (d_1 = 5.0e-4)."""
    cfg = Config.fromfile(str(repo_root / CONFIG))
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).double()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    hook = tool.build_ema_hook(cfg, model)
    generator = torch.Generator().manual_seed(0)
    ours_expected = original = None
    for k in range(1, 6):
        with torch.no_grad():
            for value in model.state_dict().values():
                if value.dtype.is_floating_point:
                    value.copy_(torch.randn(value.shape, generator=generator, dtype=value.dtype))
        weights = model.state_dict()
        hook.after_train_iter(SimpleNamespace(model=model, iter=k - 1, epoch=0), k - 1)
        d = original_decay(k)
        original = {n: d * (initial if k == 1 else original)[n] + (1 - d) * w
                    for n, w in weights.items() if w.dtype.is_floating_point}
        ours_expected = ({n: weights[n].clone() for n in original} if k == 1 else
                         {n: d * ours_expected[n] + (1 - d) * weights[n] for n in original})
        averaged = hook.ema_model.module.state_dict()
        for name in original:
            torch.testing.assert_close(averaged[name], ours_expected[name], rtol=1e-12, atol=0)
            if k == 1:
                torch.testing.assert_close(original[name] - averaged[name],
                                           d * (initial[name] - weights[name]), rtol=1e-9, atol=0)
        assert tool.ema_decay(hook, k) == (0.0 if k == 1 else pytest.approx(d, rel=1e-12))


def test_dfine_loss_names_and_the_zero_term(tool):
    """A D-FINE reference's terms under our names (D-FINE's mapping, written out by hand for 3
    decoder layers); its DDF of the last denoising layer with itself, exactly 0 and not among
    ours, is left out, a non-zero term ours lacks is an error; the family's converter."""
    from detr_plugin.converters import convert_dfine
    convert, names = tool.FAMILIES['dfine']
    assert convert is convert_dfine
    theirs = [dict(loss_vfl=1.0, loss_fgl_aux_0=0.5, loss_bbox_dn_pre=0.25, loss_ddf_dn_2=0.0,
                   total=1.75)]
    ours = [{'loss_vfl': 1.0, 'd0.loss_fgl': 0.5 + 1e-3, 'pre_dn_loss_bbox': 0.25,
             'total': 1.75 + 1e-3}]
    row, = tool.loss_differences(theirs, ours, 3, names)
    assert row['worst_term'] == 'd0.loss_fgl'
    assert row['term_diff'] == pytest.approx(1e-3) and row['diff'] == pytest.approx(1e-3)
    theirs[0]['loss_ddf_dn_2'] = 0.1
    with pytest.raises(AssertionError, match='dn_loss_ddf'):
        tool.loss_differences(theirs, ours, 3, names)
