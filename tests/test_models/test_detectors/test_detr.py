"""DETR end to end on tiny inputs: shapes of every mode, padding masks, and bad input."""
import pytest
import torch
from mmengine.config import Config

from detr_plugin.registry import MODELS, build_in_scope
from detr_plugin.utils import register_all_modules

register_all_modules()


def tiny_detr_cfg(num_classes=3):
    cfg = Config.fromfile('configs/detr/detr_r18_1xb8-demo.py').model
    cfg.num_queries = 5
    cfg.encoder.num_layers = 1
    cfg.decoder.num_layers = 2
    cfg.bbox_head.num_classes = num_classes
    cfg.test_cfg.max_per_img = 5
    return cfg


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    m = build_in_scope(MODELS, tiny_detr_cfg())
    m.init_weights()
    return m


def test_loss_predict_tensor_modes(model, make_batch):
    inputs, samples = make_batch([(64, 64), (48, 40)], [[[2, 3, 30, 40], [10, 10, 20, 50]], []])
    data = model.data_preprocessor(dict(inputs=list(inputs), data_samples=samples), training=True)
    losses = model(**data, mode='loss')
    assert {'loss_cls', 'loss_bbox', 'loss_iou', 'd0.loss_cls'} <= set(losses)
    total = sum(v for k, v in losses.items() if 'loss' in k)
    total.backward()
    assert torch.isfinite(total)

    model.eval()
    with torch.no_grad():
        preds = model(**data, mode='predict')
        logits, boxes = model(data['inputs'], mode='tensor')   # no data samples needed
    model.train()
    assert len(preds) == 2 and preds[0].pred_instances.bboxes.shape == (5, 4)
    assert preds[1].pred_instances.bboxes[:, 2].max() <= 40  # clamped to the 48 x 40 image
    assert logits.shape == (2, 2, 5, 4) and boxes.shape == (2, 2, 5, 4)


def test_padding_changes_only_padded_images(model, make_batch):
    """An image's prediction must not depend on the padding added for other images."""
    model.eval()
    inputs, samples = make_batch([(32, 32)], [[]], batch_shape=(32, 32))
    big_inputs, big_samples = make_batch([(32, 32), (64, 64)], [[], []], batch_shape=(64, 64))
    big_inputs[0] = 0
    big_inputs[0, :, :32, :32] = inputs[0]
    with torch.no_grad():
        feat = model.extract_feat(inputs)
        alone = model.forward_transformer(feat, samples)
        # the backbone sees zeros in the padding, so give the transformer equal features where valid
        big_feat = model.extract_feat(big_inputs)
        big_feat[0, :, :feat.shape[2], :feat.shape[3]] = feat[0]
        padded = model.forward_transformer(big_feat, big_samples)
    model.train()
    torch.testing.assert_close(padded[:, 0], alone[:, 0], atol=1e-4, rtol=1e-4)


def test_positional_width_mismatch_is_reported():
    cfg = tiny_detr_cfg()
    cfg.positional_encoding.num_feats = 32
    with pytest.raises(ValueError, match='num_feats=64'):
        build_in_scope(MODELS, cfg)
