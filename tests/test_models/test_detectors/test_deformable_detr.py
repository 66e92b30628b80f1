"""Deformable DETR end to end on tiny inputs (plain, box refinement, two-stage): every mode,
images of different sizes, an image without boxes, padding invariance, config errors, bfloat16
autocast, and a 2-iteration mmengine Runner training on generated demo data."""
import copy
import pathlib

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from detr_plugin.registry import MODELS
from detr_plugin.testing import HostSyncRecorder
from detr_plugin.utils import register_all_modules

register_all_modules(init_default_scope=False)  # mmdet's modules too (the Runner's visualizer)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
DEMO_CONFIG = str(REPO_ROOT / 'configs/deformable_detr/deformable-detr_r18_1xb8-demo.py')
VARIANTS = {'plain': (False, False), 'refine': (True, False), 'refine-twostage': (True, True)}


def tiny_cfg(refine, two_stage):
    cfg = Config.fromfile(DEMO_CONFIG).model
    cfg.num_queries = 6
    cfg.with_box_refine = refine
    cfg.as_two_stage = two_stage
    cfg.encoder.num_layers = 1
    cfg.decoder.num_layers = 2
    cfg.test_cfg.max_per_img = 5
    return cfg


@pytest.fixture(scope='module', params=list(VARIANTS))
def model(request):
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('detr_plugin'):  # module fixtures precede conftest's
        m = MODELS.build(tiny_cfg(*VARIANTS[request.param]))
    m.init_weights()
    return m


def test_loss_predict_tensor_modes(model, make_batch):
    inputs, samples = make_batch([(64, 64), (48, 40)], [[[2, 3, 30, 40], [10, 10, 20, 50]], []])
    data = model.data_preprocessor(dict(inputs=list(inputs), data_samples=samples), training=True)
    losses = model(**data, mode='loss')
    expected = {'loss_cls', 'loss_bbox', 'loss_iou', 'd0.loss_cls', 'd0.loss_bbox', 'd0.loss_iou'}
    if model.as_two_stage:
        expected |= {'enc_loss_cls', 'enc_loss_bbox', 'enc_loss_iou'}
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    model.zero_grad()
    total.backward()
    # every trainable parameter gets a gradient (DDP without find_unused_parameters needs it)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing

    model.eval()
    with torch.no_grad():
        preds = model(**data, mode='predict')
        logits, boxes = model(data['inputs'], mode='tensor')  # no data samples needed
    model.train()
    assert len(preds) == 2 and preds[0].pred_instances.bboxes.shape == (5, 4)
    assert preds[1].pred_instances.bboxes[:, 2].max() <= 40  # clamped to the 48 x 40 image
    assert logits.shape == (2, 2, 6, 3) and boxes.shape == (2, 2, 6, 4)
    assert ((boxes >= 0) & (boxes <= 1)).all()


def test_batch_of_images_without_boxes(model, make_batch):
    inputs, samples = make_batch([(64, 64), (32, 64)], [[], []])
    data = model.data_preprocessor(dict(inputs=list(inputs), data_samples=samples), training=True)
    losses = model(**data, mode='loss')
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total) and losses['loss_bbox'] == 0


def test_padding_changes_only_padded_images(model, make_batch):
    """An image's decoder output does not depend on the padding added for other images, given the
    same features on its valid region. (Two-stage may select padding proposals, as the original:
    there the proposals must match instead.)"""
    model.eval()
    inputs, samples = make_batch([(64, 64)], [[]], batch_shape=(64, 64))
    big_inputs, big_samples = make_batch([(64, 64), (128, 128)], [[], []], batch_shape=(128, 128))
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        big_feats = [f.clone() for f in model.extract_feat(big_inputs)]
        for small, big in zip(feats, big_feats):  # the backbone sees the padding: give it equal maps
            big[0, :, :small.shape[2], :small.shape[3]] = small[0]
        small_out = model.forward_transformer(feats, samples)
        big_out = model.forward_transformer(big_feats, big_samples)
    model.train()
    enc = small_out.enc_logits, small_out.enc_boxes
    big_enc = big_out.enc_logits, big_out.enc_boxes
    if not model.as_two_stage:
        torch.testing.assert_close(big_out.logits[:, 0], small_out.logits[:, 0], atol=1e-4,
                                   rtol=1e-4)
        torch.testing.assert_close(big_out.boxes[:, 0], small_out.boxes[:, 0], atol=1e-5,
                                   rtol=1e-5)
    else:
        # every valid token's proposal is the same; padding tokens propose nothing (+inf -> 1)
        n = sum(f.shape[2] * f.shape[3] for f in big_feats)
        levels = model.flatten_levels(big_feats, big_samples)[2]
        valid = ~levels.padding_mask[0]
        assert valid.sum() == enc[0].shape[1] and big_enc[0].shape[1] == n
        torch.testing.assert_close(big_enc[0][0, valid], enc[0][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(big_enc[1][0, valid], enc[1][0], atol=1e-5, rtol=1e-5)
        assert (big_enc[1][0, ~valid] == 1).all()


def test_two_stage_needs_enough_tokens(make_batch):
    cfg = tiny_cfg(True, True)
    cfg.num_queries = 200  # a 64 x 64 image gives 8*8 + 4*4 + 2*2 = 84 tokens
    m = MODELS.build(cfg)
    inputs, samples = make_batch([(64, 64)], [[]])
    with pytest.raises(ValueError, match='num_queries=200'):
        m(inputs, samples, mode='tensor')


def test_level_count_mismatch_is_reported():
    cfg = tiny_cfg(False, False)
    cfg.num_feature_levels = 4
    with pytest.raises(ValueError, match='num_outs'):
        MODELS.build(cfg)
    cfg = tiny_cfg(False, False)
    cfg.decoder.layer_cfg = dict(cfg.decoder.layer_cfg, num_levels=4)
    with pytest.raises(ValueError, match='num_levels'):
        MODELS.build(cfg)


def test_init_follows_the_original():
    torch.manual_seed(0)
    m = MODELS.build(tiny_cfg(False, False))
    m.init_weights()
    attn = m.encoder.layers[0].self_attn
    assert not attn.sampling_offsets.weight.any() and not attn.attention_weights.weight.any()
    assert attn.sampling_offsets.bias.abs().max() == attn.num_points  # circle of radius 1..P
    assert not m.reference_points.bias.any()
    # the transformer's matrices are Xavier-uniform: bounded by sqrt(6 / (fan_in + fan_out))
    w = m.decoder.layers[0].ffn.linear1.weight
    assert w.abs().max() <= (6 / sum(w.shape))**0.5


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory, demo_runs):
    root = tmp_path_factory.mktemp('demo')
    demo_runs.load_make_demo_dataset().make_demo_dataset(str(root), seed=0, num_train=8,
                                                         num_val=4, size=64)
    return root


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_runner_trains_two_iterations(variant, demo_data, demo_runs, tmp_path):
    from mmengine.runner import Runner
    cfg = Config.fromfile(DEMO_CONFIG)
    cfg.model.with_box_refine, cfg.model.as_two_stage = VARIANTS[variant]
    cfg.model.encoder.num_layers, cfg.model.decoder.num_layers = 1, 2
    cfg.model.num_queries = 10
    cfg.model.backbone.frozen_stages = 4  # the transformer's training is under test: keep it quick
    cfg.work_dir = str(tmp_path)
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=1, val_begin=2)  # 8 images / 4
    cfg.train_dataloader.batch_size = 4
    demo_runs.read_demo_data(cfg, demo_data)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        for step in cfg[loader].dataset.pipeline:
            if step.type == 'Resize':
                step.scale = (64, 64)
    cfg.default_hooks.logger.interval = 1
    runner = Runner.from_cfg(cfg)
    before = copy.deepcopy(runner.model.state_dict())
    runner.train()
    assert runner.iter == 2
    after = runner.model.state_dict()
    for key in ('bbox_head.cls_branches.0.weight', 'neck.convs.0.conv.weight',
                'encoder.layers.0.self_attn.sampling_offsets.weight'):
        assert not torch.equal(before[key], after[key]), key
    assert (tmp_path / 'epoch_1.pth').is_file()


def test_bfloat16_autocast(make_batch):
    """Mixed precision: the loss runs and the boxes stay float32 through the refinement."""
    torch.manual_seed(0)
    model = MODELS.build(tiny_cfg(True, True))
    model.init_weights()
    inputs, samples = make_batch([(64, 64), (48, 40)], [[[2, 3, 30, 40]], []])
    data = model.data_preprocessor(dict(inputs=list(inputs), data_samples=samples), training=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = model(**data, mode='loss')
        feats = model.extract_feat(data['inputs'])
        outputs = model.forward_transformer(feats, data['data_samples'])
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    assert outputs.boxes.dtype == torch.float32


def test_index_tensors_made_once_per_layout_and_never_read_back(model, make_batch):
    """Both attentions get the same index tensors on every forward of a layout (no host -> device
    copy after the first) and the level sizes on the host, so that the MSDA op reads nothing back
    from the device (no wait for the GPU; CUDA graph capture)."""
    inputs, samples = make_batch([(64, 56)], [[]], batch_shape=(72, 64))  # a layout of its own
    seen = []
    attns = (model.encoder.layers[0].self_attn, model.decoder.layers[0].cross_attn)
    hooks = [a.register_forward_pre_hook(lambda m, args: seen.append(args[3:])) for a in attns]
    model.eval()
    model.level_index.tensors.clear()  # made while recording: the recorder places them
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        with HostSyncRecorder(model) as rec:
            model.forward_transformer(feats, samples)
        model.forward_transformer(feats, samples)
    model.train()
    for hook in hooks:
        hook.remove()
    assert not [s for s in rec.sites if 'ms_deform_attn' in s.function], rec.report()
    assert len(seen) == 4
    # (spatial_shapes, level_start_index, padding_mask, shapes)
    for args in seen[1:]:
        assert args[0] is seen[0][0] and args[1] is seen[0][1]
        assert args[3] == tuple(tuple(f.shape[-2:]) for f in feats)
