"""RT-DETRv2: the configs against the original YAMLs' settings (written out below from
rtdetrv2_pytorch/configs/rtdetrv2/*.yml), and v2 decoders (per-level point counts, discrete
sampling) training and predicting; discrete sampling leaves only the sampling offsets without
gradient, and those are frozen (so DDP needs no unused-parameter search)."""
import pathlib

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

from detr_plugin.registry import MODELS

ROOT = pathlib.Path(__file__).resolve().parents[3]

# config: (decoder layers, points per level, sampling, eval_idx, epochs, stop epoch,
#          batch multi-scale, backbone lr multiplier, bias decay multiplier)
ORIGINAL = {
    'rtdetrv2_r18vd_8xb2-120e_coco': (3, [4, 4, 4], 'default', -1, 120, 117, False, 1.0, None),
    'rtdetrv2_r18vd-sp1_8xb2-120e_coco': (3, [1, 1, 1], 'default', -1, 120, 117, False, 1.0, None),
    'rtdetrv2_r18vd-sp2_8xb2-120e_coco': (3, [2, 2, 2], 'default', -1, 120, 117, False, 1.0, None),
    'rtdetrv2_r18vd-sp3_8xb2-120e_coco': (3, [3, 3, 3], 'default', -1, 120, 117, False, 1.0, None),
    'rtdetrv2_r18vd-dsp_8xb2-36e_coco': (3, [4, 4, 4], 'discrete', -1, 36, 33, False, 1.0, None),
    'rtdetrv2_r34vd_8xb2-120e_coco': (4, [4, 4, 4], 'default', -1, 120, 117, True, 0.5, 0.0),
    'rtdetrv2_r34vd-dsp_8xb2-12e_coco': (4, [4, 4, 4], 'discrete', -1, 12, 10, True, 0.5, 0.0),
    'rtdetrv2_r50vd_8xb2-72e_coco': (6, [4, 4, 4], 'default', -1, 72, 71, True, 0.1, None),
    'rtdetrv2_r50vd-dsp_8xb2-12e_coco': (6, [4, 4, 4], 'discrete', -1, 12, 10, True, 0.1, None),
    'rtdetrv2_r50vd-m_8xb2-84e_coco': (6, [4, 4, 4], 'default', 2, 84, 81, True, 0.1, None),
    'rtdetrv2_r50vd-m-dsp_8xb2-36e_coco': (6, [4, 4, 4], 'discrete', 2, 36, 33, True, 0.1, None),
    'rtdetrv2_r101vd_8xb2-72e_coco': (6, [4, 4, 4], 'default', -1, 72, 71, True, 0.01, None),
}


def test_every_config_is_in_the_table():
    names = {p.stem for p in (ROOT / 'configs/rtdetrv2').glob('*_coco.py')}
    assert names == set(ORIGINAL)


@pytest.mark.parametrize('name', sorted(ORIGINAL))
def test_config_settings_are_the_originals(name):
    layers, points, method, eval_idx, epochs, stop, multi_scale, lr_mult, bias_decay = \
        ORIGINAL[name]
    cfg = Config.fromfile(ROOT / 'configs/rtdetrv2' / f'{name}.py')
    decoder = cfg.model.decoder
    assert decoder.num_layers == layers
    assert decoder.layer_cfg.num_points == points
    assert decoder.layer_cfg.cross_attn_method == method
    assert cfg.model.bbox_head.eval_idx == eval_idx
    assert cfg.train_cfg.max_epochs == epochs
    assert cfg.default_hooks.stop_augmentation.stop_epoch == stop
    assert bool(cfg.model.data_preprocessor.get('batch_augments')) == multi_scale
    paramwise = cfg.optim_wrapper.paramwise_cfg
    assert paramwise.custom_keys.backbone.lr_mult == lr_mult
    assert paramwise.norm_decay_mult == 0.0 and paramwise.get('bias_decay_mult') == bias_decay
    assert ('dsp' in name) == (cfg.get('load_from') is not None)


@pytest.mark.parametrize('name', ['rtdetrv2_r18vd_8xb2-120e_coco', 'rtdetrv2_r50vd_8xb2-72e_coco'])
def test_learning_rate_warm_up_is_the_originals(name):
    """The original's LinearWarmup(warmup_duration=2000): iteration k (0-based) trains at
    min(1, (k + 1) / 2000) of the learning rate."""
    from mmengine.registry import PARAM_SCHEDULERS
    cfg = Config.fromfile(ROOT / 'configs/rtdetrv2' / f'{name}.py')
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1e-4)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optimizer))
                  for s in cfg.param_scheduler]
    for k in range(2050):
        expected = 1e-4 * min(1.0, (k + 1) / 2000)
        assert optimizer.param_groups[0]['lr'] == pytest.approx(expected, rel=1e-9), k
        optimizer.step()
        for scheduler in schedulers:
            scheduler.step()


def tiny_v2(query_select_method='default', **layer_cfg):
    cfg = Config.fromfile(ROOT / 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py').model
    cfg.decoder.update(num_queries=6, num_layers=2)
    cfg.decoder.layer_cfg.update(layer_cfg)
    cfg.bbox_head.query_select_method = query_select_method
    cfg.denoising.num_denoising = 4
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        model = MODELS.build(cfg)
    model.init_weights()
    return model


def batch(size=64):
    inputs = torch.rand(2, 3, size, size) * 255
    samples = []
    for boxes in ([[4, 6, 30, 40], [20, 10, 60, 50]], []):
        s = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                        scale_factor=(1., 1.), batch_input_shape=(size, size)))
        s.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
                                      labels=torch.arange(len(boxes)) % 3)
        samples.append(s)
    return inputs, samples


@pytest.mark.parametrize('layer_cfg', [dict(num_points=[3, 6, 3]), dict(num_points=[1, 1, 1]),
                                       dict(cross_attn_method='discrete'),
                                       dict(query_select_method='agnostic')])
def test_v2_decoders_train_and_predict(layer_cfg):
    model = tiny_v2(**layer_cfg)
    attn = model.decoder.layers[0].cross_attn
    points = layer_cfg.get('num_points', [4, 4, 4])
    assert attn.sampling_offsets.out_features == 8 * sum(points) * 2  # 8 heads, (x, y)
    inputs, samples = batch()
    data = model.data_preprocessor(dict(inputs=list(inputs), data_samples=samples), training=True)
    model.train()
    losses = model(**data, mode='loss')
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    discrete = layer_cfg.get('cross_attn_method') == 'discrete'
    for name, p in model.named_parameters():
        if 'sampling_offsets' in name and 'decoder' in name and discrete:
            assert not p.requires_grad, name  # nearest-cell sampling: no gradient to offsets
        elif p.requires_grad:
            assert p.grad is not None, name
    model.eval()
    with torch.no_grad():
        preds = model(**model.data_preprocessor(dict(inputs=list(inputs), data_samples=samples)),
                      mode='predict')
    assert len(preds[0].pred_instances.scores) == 6 * 3  # every (query, class) pair: 18 < 30
