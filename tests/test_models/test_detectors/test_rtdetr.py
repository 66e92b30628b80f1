"""RT-DETR end to end on tiny inputs: every mode, batches with some or all images without boxes
(every trainable parameter still gets a gradient, as DDP needs), eval_idx, and a 2-iteration
mmengine Runner training on generated demo data."""
import copy
import pathlib

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

from detr_plugin.registry import MODELS
from detr_plugin.utils import register_all_modules

register_all_modules(init_default_scope=False)  # mmdet's modules too (the Runner's visualizer)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
DEMO_CONFIG = str(REPO_ROOT / 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py')


def tiny_cfg(eval_idx=-1, num_queries=6):
    cfg = Config.fromfile(DEMO_CONFIG).model
    cfg.decoder.num_queries = num_queries
    cfg.decoder.num_layers = 2
    cfg.bbox_head.eval_idx = eval_idx
    cfg.denoising.num_denoising = 4
    cfg.test_cfg.max_per_img = 5
    return cfg


def build(cfg):
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('detr_plugin'):  # module fixtures precede conftest's
        m = MODELS.build(cfg)
    m.init_weights()
    return m


def make_batch(boxes_per_image, size=(64, 64)):
    """Images of one size with gt boxes (xyxy pixels)."""
    inputs = torch.rand(len(boxes_per_image), 3, *size) * 255
    samples = []
    for boxes in boxes_per_image:
        s = DetDataSample(metainfo=dict(img_shape=size, ori_shape=(2 * size[0], 2 * size[1]),
                                        scale_factor=(0.5, 0.5), batch_input_shape=size,
                                        pad_shape=size))
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        s.gt_instances = InstanceData(bboxes=boxes, labels=torch.arange(len(boxes)) % 3)
        samples.append(s)
    return inputs, samples


@pytest.fixture(scope='module')
def model():
    return build(tiny_cfg())


def loss_and_grads(model, boxes_per_image):
    model.train()
    model.zero_grad()
    inputs, samples = make_batch(boxes_per_image)
    data = model.data_preprocessor(dict(inputs=list(inputs), data_samples=samples), training=True)
    losses = model(**data, mode='loss')
    total = sum(losses.values())
    total.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    return losses, total, no_grad


@pytest.mark.parametrize('boxes', [
    [[[2, 3, 30, 40], [10, 10, 20, 50]], []],  # one image without boxes
    [[], []],                                  # no box in the whole batch
])
def test_loss_reaches_every_parameter(model, boxes):
    losses, total, no_grad = loss_and_grads(model, boxes)
    assert torch.isfinite(total)
    assert no_grad == []  # the same graph on every rank, whatever its images hold
    names = {'loss_cls', 'loss_bbox', 'loss_iou'}
    assert set(losses) == (names | {f'd0.{n}' for n in names} | {f'enc_{n}' for n in names} |
                           {f'dn_{n}' for n in names} | {f'd0.dn_{n}' for n in names})
    if not any(boxes):
        assert losses['loss_bbox'] == 0 and losses['dn_loss_iou'] == 0


def test_predict_and_tensor_modes(model):
    model.eval()
    inputs, samples = make_batch([[[2, 3, 30, 40]], []])
    data = model.data_preprocessor(dict(inputs=list(inputs), data_samples=samples))
    with torch.no_grad():
        preds = model(**data, mode='predict')
        logits, boxes = model(data['inputs'], mode='tensor')
    assert logits.shape == (1, 2, 6, 3) and boxes.shape == (1, 2, 6, 4)
    for pred in preds:
        inst = pred.pred_instances
        assert inst.bboxes.shape == (5, 4) and inst.labels.max() < 3
        assert (inst.scores[:-1] >= inst.scores[1:]).all()
        assert inst.bboxes.max() <= 128 and inst.bboxes.min() >= 0  # rescaled to 128 x 128
    # the detections are the top-5 (query, class) pairs of the tensor outputs
    expected = logits[0, 0].sigmoid().flatten().topk(5).values
    torch.testing.assert_close(preds[0].pred_instances.scores, expected)


def test_eval_idx_selects_the_inference_layer():
    full, early = build(tiny_cfg()), build(tiny_cfg(eval_idx=0))
    early.load_state_dict(full.state_dict())
    inputs = torch.rand(1, 3, 64, 64)
    full.train()
    for module in full.modules():  # BatchNorm with running statistics in both passes
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    with torch.no_grad():
        all_layers = full._forward(inputs)
        early.eval()
        first = early._forward(inputs)
    torch.testing.assert_close(first[0][0], all_layers[0][0])
    torch.testing.assert_close(first[1][0], all_layers[1][0])


def test_mismatched_widths_are_reported():
    cfg = tiny_cfg()
    cfg.bbox_head.embed_dims = 64
    with pytest.raises(ValueError, match='embed_dims'):
        build(cfg)


def test_runner_trains_two_iterations(tmp_path, demo_runs):
    from mmengine.runner import Runner
    data = tmp_path / 'demo'
    demo_runs.load_make_demo_dataset().make_demo_dataset(str(data), seed=0, num_train=8, num_val=4)
    cfg = Config.fromfile(DEMO_CONFIG)
    cfg.model.decoder.num_layers = 2
    cfg.work_dir = str(tmp_path / 'work')
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=1, val_begin=2)  # 8 images / 4
    cfg.train_dataloader.batch_size = 4
    demo_runs.read_demo_data(cfg, data)
    cfg.default_hooks.logger.interval = 1
    runner = Runner.from_cfg(cfg)
    before = copy.deepcopy(runner.model.state_dict())
    runner.train()
    assert runner.iter == 2
    after = runner.model.state_dict()
    for key in ('bbox_head.cls_branches.1.weight', 'denoising.label_embed.weight',
                'neck.encoder.0.layers.0.self_attn.in_proj_weight'):
        assert not torch.equal(before[key], after[key]), key
    assert (tmp_path / 'work' / 'epoch_1.pth').is_file()


def test_training_after_inference_under_inference_mode():
    """Layout tensors and anchors are cached across calls: made by a first predict under
    inference_mode (as a deployment may do), they must still serve training steps, at a new
    size and at the cached one."""
    model = build(tiny_cfg())
    model.eval()
    inputs, samples = make_batch([[[2, 3, 30, 40]]], size=(96, 96))
    with torch.inference_mode():
        model.predict(inputs, samples)
    losses, total, no_grad = loss_and_grads(model, [[[2, 3, 30, 40]], []])  # 64x64
    assert torch.isfinite(total) and no_grad == []
    inputs, samples = make_batch([[[2, 3, 30, 40]]], size=(96, 96))  # the cached size, training
    model.train()
    total = sum(model.loss(inputs, samples).values())
    total.backward()
    assert torch.isfinite(total)


def test_padded_batch_boxes_are_in_the_padded_frame():
    """RT-DETR's anchors tile the whole padded input. With untrained (zero) box heads every
    prediction is its anchor: centred on a pixel of level l, ((j + 0.5) * s, (i + 0.5) * s) in
    pixels of the padded input, s = 8, 16, 32. A 48x64 image padded to 64x64 must keep those
    centres (normalizing by the 48-pixel image height instead put them at 0.75 of that)."""
    cfg = tiny_cfg(num_queries=20)
    cfg.test_cfg.max_per_img = 60  # every query with every class
    model = build(cfg)
    model.eval()
    inputs = torch.zeros(1, 3, 64, 64)
    inputs[:, :, :48] = torch.rand(1, 3, 48, 64) * 255
    sample = DetDataSample(metainfo=dict(img_shape=(48, 64), ori_shape=(48, 64),
                                         scale_factor=(1., 1.), batch_input_shape=(64, 64),
                                         pad_shape=(64, 64)))
    with torch.no_grad():
        boxes = model.predict(inputs, [sample], rescale=False)[0].pred_instances.bboxes
    inside = (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < 64) & (boxes[:, 3] < 48)
    assert inside.sum() >= 3  # unclamped boxes keep their centres
    centres = (boxes[inside, :2] + boxes[inside, 2:]) / 2
    on_grid = torch.zeros(len(centres), dtype=torch.bool)
    for stride in (8, 16, 32):
        cells = centres / stride - 0.5
        on_grid |= ((cells - cells.round()).abs() < 1e-3).all(1)
    assert on_grid.all(), centres[~on_grid]


def test_denoising_queries_keep_float32_gts_under_autocast():
    """Mixed precision: the denoising queries start from the gts in float32. Without noise a
    positive query's reference box is its gt, by hand (pixels / 64 as cxcywh); normalizing the
    gts in the dtype of the bfloat16 features moved them by up to 1/512 (1.3 px at 640)."""
    model = build(tiny_cfg())
    model.train()
    model.denoising.box_noise_scale = 0.0
    model.denoising.label_noise_ratio = 0.0
    box = [2.3, 3.1, 30.7, 40.9]
    inputs, samples = make_batch([[box]])
    data = model.data_preprocessor(dict(inputs=list(inputs), data_samples=samples), training=True)
    groups = []
    model.denoising.register_forward_hook(lambda m, args, out: groups.append(out))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        model(**data, mode='loss')
    x0, y0, x1, y1 = (v / 64 for v in box)
    expected = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
    positive = groups[0].ref_boxes_unact[0, 0].float().sigmoid()
    torch.testing.assert_close(positive, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize('sync_bn', [True, False])
def test_sync_bn_converts_every_batch_norm(sync_bn):
    from torch import nn

    from detr_plugin.models.layers import SyncBatchNorm2d
    cfg = tiny_cfg()
    cfg.sync_bn = sync_bn
    norms = [m for m in build(cfg).modules() if isinstance(m, nn.BatchNorm2d)]
    # the R18 backbone's trainable BatchNorms, the encoder's and the decoder's input projections
    assert len(norms) > 40
    assert all((type(m) is SyncBatchNorm2d) == sync_bn for m in norms)


def _features_on_rank(rank, port, inputs, results):
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
    try:
        cfg = tiny_cfg()
        cfg.sync_bn = True
        model = build(cfg).train()
        feats = model.extract_feat(inputs[2 * rank:2 * rank + 2])  # this rank's 2 images
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        results[rank] = ([f.detach() for f in feats],
                         [n.running_mean.clone() for n in norms])
    finally:
        dist.destroy_process_group()


def test_sync_bn_features_on_two_ranks_equal_one_process_on_the_whole_batch():
    """BatchNorm is the only layer of the backbone and the hybrid encoder that mixes images: with
    sync_bn, two ranks holding half a batch each compute exactly the features (and running
    statistics) that one process computes on the whole batch."""
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    inputs = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    results = mp.Manager().dict()
    mp.spawn(_features_on_rank, args=(port, inputs, results), nprocs=2)
    reference = build(tiny_cfg()).train()   # plain BatchNorm, one process
    feats = reference.extract_feat(inputs)
    norms = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for level, expected in enumerate(feats):
        got = torch.cat([results[0][0][level], results[1][0][level]])
        torch.testing.assert_close(got, expected.detach(), rtol=1e-4, atol=1e-4)
    for rank in (0, 1):
        for got, norm in zip(results[rank][1], norms):
            torch.testing.assert_close(got, norm.running_mean, rtol=1e-4, atol=1e-5)
