"""D-FINE (RTDETR detector with DFINEDecoder + DFINEHead) from the demo config: loss, predict and
tensor modes, gradients."""
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from detr_plugin.registry import MODELS

CONFIG = 'configs/dfine/dfine_r18vd_1xb8-demo.py'


@pytest.fixture(scope='module')
def model():
    cfg = Config.fromfile(CONFIG).model
    cfg.neck.update(embed_dims=32, ffn_dims=64)
    cfg.decoder.update(in_channels=[32] * 3, embed_dims=32, num_queries=10,
                       layer_cfg=dict(num_heads=4, ffn_dims=64))
    cfg.bbox_head.update(embed_dims=32)
    cfg.denoising.update(num_denoising=6)
    cfg.test_cfg.update(max_per_img=10)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        return MODELS.build(cfg)


def test_the_demo_config_builds_dfine(model):
    assert type(model.decoder).__name__ == 'DFINEDecoder'
    assert type(model.bbox_head).__name__ == 'DFINEHead'
    assert model.decoder.layers[0].cross_attn.level_points == (3, 6, 3)
    assert model.denoising.absolute_sizes


def test_loss_reaches_every_trainable_parameter(model, make_batch):
    # image 1 has no box (a batch without any box: test_dfine_head.py)
    inputs, samples = make_batch([(64, 64), (48, 64)], [[[4, 4, 30, 40], [10, 20, 60, 50]], []])
    data = model.data_preprocessor(dict(inputs=list(inputs), data_samples=samples), training=True)
    model.train()
    model.zero_grad()
    losses = model(**data, mode='loss')
    assert {'loss_vfl', 'loss_fgl', 'd0.loss_ddf', 'pre_loss_giou', 'enc_loss_bbox',
            'dn_loss_fgl', 'pre_dn_loss_vfl'} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert model.bbox_head.up.grad is None  # frozen, as in the original


def test_predict_and_tensor_modes(model, make_batch):
    inputs, samples = make_batch([(64, 64)], [[[4, 4, 30, 40]]])
    data = model.data_preprocessor(dict(inputs=list(inputs), data_samples=samples))
    model.eval()
    with torch.no_grad():
        preds = model(**data, mode='predict')
        logits, boxes = model(data['inputs'], mode='tensor')
    assert logits.shape == (1, 1, 10, 3) and boxes.shape == (1, 1, 10, 4)
    scores = preds[0].pred_instances.scores
    expected = logits[0].sigmoid().flatten().topk(10).values
    torch.testing.assert_close(scores, expected)
