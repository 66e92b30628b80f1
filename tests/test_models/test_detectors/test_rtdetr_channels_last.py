"""``RTDETR(channels_last=True)`` (RT-DETR, RT-DETRv2, D-FINE, DEIM): the model with the
default layout and the same weights is the reference; the channels-last one must give its losses
(float32) and gradients (float64: see below), keep its convolutions, features and gradients in
channels-last memory, and exchange checkpoints and EMA copies with it.

Two small models cover the family's parts: the RT-DETR demo (ResNet-18-vd, RT-DETR's hybrid
encoder, decoder input projections) and D-FINE N (HGNetv2-B0 with learnable affines, D-FINE's
hybrid encoder, decoder and head). The GPU tests run the RT-DETRv2 R18 COCO model: one bf16
training step in both layouts, and the count of cuDNN's layout transposes in a step.
"""
import copy
import io
import pathlib

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

from detr_plugin.models.layers.ema import ForeachExpMomentumEMA
from detr_plugin.registry import MODELS

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
CONFIGS = dict(rtdetr='configs/rtdetr/rtdetr_r18vd_1xb8-demo.py',
               dfine='configs/dfine/dfine_hgnetv2-n_8xb16-160e_coco.py')
R18_COCO = 'configs/rtdetrv2/rtdetrv2_r18vd_8xb2-120e_coco.py'
CHANNELS_LAST = torch.channels_last


def small_cfg(name: str, channels_last: bool = False) -> Config:
    """The config's model with 2 decoder layers, 6 queries, 4 denoising queries, 3 classes and
    no pretrained backbone."""
    cfg = Config.fromfile(str(REPO_ROOT / CONFIGS[name])).model
    cfg.backbone.init_cfg = None
    cfg.data_preprocessor.batch_augments = None
    cfg.decoder.update(num_layers=2, num_queries=6)
    cfg.denoising.num_denoising = 4
    cfg.bbox_head.num_classes = 3
    cfg.test_cfg.max_per_img = 5
    cfg.channels_last = channels_last
    return cfg


def build(cfg: Config, seed: int = 0):
    torch.manual_seed(seed)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


@pytest.fixture(scope='module', params=sorted(CONFIGS))
def pair(request):
    """name, a default model and a channels-last one holding its weights (loaded from its state
    dict, as a checkpoint would be); tests that change them take copies."""
    with DefaultScope.overwrite_default_scope('detr_plugin'):  # module fixtures precede conftest's
        reference = build(small_cfg(request.param))
        model = build(small_cfg(request.param, channels_last=True), seed=1)
    model.load_state_dict(reference.state_dict())
    return request.param, reference, model


def batch(size=(64, 96)):
    """Two images of ``size`` (h, w) and their data samples: one with two boxes (xyxy pixels),
    one with none."""
    g = torch.Generator().manual_seed(0)
    samples = []
    for boxes in ([[2., 3., 30., 40.], [40., 10., 90., 50.]], []):
        s = DetDataSample(metainfo=dict(img_shape=size, ori_shape=size, scale_factor=(1., 1.),
                                        batch_input_shape=size, pad_shape=size))
        boxes = torch.tensor(boxes).reshape(-1, 4)
        s.gt_instances = InstanceData(bboxes=boxes, labels=torch.arange(len(boxes)) % 3)
        samples.append(s)
    images = [torch.rand(3, *size, generator=g) * 255 for _ in samples]
    return images, samples


def preprocessed(model, size=(64, 96)):
    """:func:`batch` through the model's data preprocessor in training mode."""
    images, samples = batch(size)
    return model.data_preprocessor(dict(inputs=images, data_samples=samples), training=True)


def training_losses(model, data):
    """The loss terms of one training forward; the denoising queries drawn from the same seed
    for every model."""
    model.train()
    torch.manual_seed(0)
    return model.loss(data['inputs'], data['data_samples'])


def losses_and_grads(model, data):
    """:func:`training_losses` and every trainable parameter's gradient."""
    model.zero_grad()
    losses = training_losses(model, data)
    sum(losses.values()).backward()
    return losses, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def conv_tensors(model):
    """name -> every 4-D parameter and buffer (the convolution weights)."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return {n: t for n, t in tensors if t.dim() == 4}


def test_float32_losses_are_the_default_layouts(pair):
    _, reference, model = pair
    data = preprocessed(reference)
    assert data['inputs'].is_contiguous()  # the preprocessor's batch: the default layout
    with torch.no_grad():
        expected, losses = (training_losses(m, data) for m in (reference, model))
    assert losses.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_float64_gradients_are_the_default_layouts(pair):
    """In float64: in float32 the CPU's channels-last kernels round differently, and the
    backward of an untrained HGNetv2 (learnable affines before BatchNorms, whose gradient
    cancels) amplifies that to about 1e-2 relative in its first stages, while float64 agrees to
    1e-12; a layout mistake (a transposed view, a wrong reshape) shows in either."""
    reference, model = (copy.deepcopy(m).double() for m in pair[1:])
    model.load_state_dict(reference.state_dict())  # (running statistics of earlier tests)
    data = preprocessed(reference)
    data['inputs'] = data['inputs'].double()
    expected, expected_grads = losses_and_grads(reference, data)
    losses, grads = losses_and_grads(model, data)
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value, rtol=1e-10, atol=1e-12, msg=key)
    assert grads.keys() == expected_grads.keys()
    scale = max(g.abs().max().item() for g in expected_grads.values())
    for key, value in expected_grads.items():
        assert grads[key] is not None, key
        torch.testing.assert_close(grads[key], value, rtol=1e-8, atol=1e-10 * scale, msg=key)
    # a channels-last parameter gets a channels-last gradient (fused optimizers pair them)
    tensors = conv_tensors(model)
    assert tensors
    for key, tensor in tensors.items():
        assert tensor.is_contiguous(memory_format=CHANNELS_LAST), key
        if tensor.requires_grad:
            assert grads[key].is_contiguous(memory_format=CHANNELS_LAST), key


def test_features_are_channels_last_and_tokens_contiguous(pair):
    """The default-layout batch enters the backbone channels-last; every level stays so, and
    the decoder's flattened tokens are (bs, N, C) contiguous."""
    _, _, model = pair
    inputs = preprocessed(model)['inputs']
    seen = []
    hook = model.backbone.register_forward_hook(
        lambda module, args, outputs: seen.append((args[0], outputs)))
    model.eval()
    with torch.no_grad():
        levels = model.extract_feat(inputs)
        memory, _ = model.decoder.flatten_levels(levels)
    hook.remove()
    (backbone_input, backbone_levels), = seen
    assert backbone_input.is_contiguous(memory_format=CHANNELS_LAST)
    for level in (backbone_input, *backbone_levels, *levels):
        assert level.is_contiguous(memory_format=CHANNELS_LAST)
        assert not level.is_contiguous()  # (C, H, W > 1: the two layouts differ)
    assert memory.is_contiguous()


def test_checkpoints_move_between_layouts(pair):
    """channels-last -> file -> default model: the same tensors in the default layout, the
    same outputs."""
    name, _, model = pair
    saved = io.BytesIO()
    torch.save(model.state_dict(), saved)
    saved.seek(0)
    state = torch.load(saved)
    assert any(t.is_contiguous(memory_format=CHANNELS_LAST) and not t.is_contiguous()
               for t in state.values())  # saved as held
    back = build(small_cfg(name), seed=2)
    back.load_state_dict(state)
    for key, value in model.state_dict().items():
        loaded = back.state_dict()[key]
        assert torch.equal(loaded, value), key
        assert loaded.is_contiguous(), key  # the default model keeps its own layout

    inputs = preprocessed(model)['inputs']
    back.eval()
    model.eval()
    with torch.no_grad():
        # logits, boxes
        torch.testing.assert_close(back._forward(inputs), model._forward(inputs), rtol=1e-4,
                                   atol=1e-5)


def test_ema_keeps_the_layout(pair):
    """The EMA copy of a channels-last model stays channels-last and averages position by
    position: after a copy and one update, average = m * new + (1 - m) * old."""
    model = copy.deepcopy(pair[2])
    ema = ForeachExpMomentumEMA(model, momentum=0.1, gamma=1000)
    ema.update_parameters(model)
    old = {k: t.clone() for k, t in conv_tensors(model).items()}
    with torch.no_grad():
        for t in conv_tensors(model).values():
            t.add_(torch.randn_like(t))
    ema.update_parameters(model)
    m = (1 - 0.1) * torch.tensor(-2. / 1000).exp().item() + 0.1  # the second update's momentum
    averaged = conv_tensors(ema.module)
    for key, new in conv_tensors(model).items():
        assert averaged[key].is_contiguous(memory_format=CHANNELS_LAST), key
        torch.testing.assert_close(averaged[key], m * new + (1 - m) * old[key], msg=key)


def test_cfg_option_turns_it_on():
    """``--cfg-options model.channels_last=True`` on a COCO config is all it takes."""
    cfg = Config.fromfile(str(REPO_ROOT / R18_COCO))
    assert not cfg.model.get('channels_last', False)  # off in the COCO configs
    cfg.merge_from_dict({'model.channels_last': True})
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.init_weights()  # in place: the layout stays
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=CHANNELS_LAST) for c in convs)


def r18_pair_on_gpu():
    """The RT-DETRv2 R18 COCO model (no pretrained backbone, no batch multi-scale resize) on
    the GPU in the default layout, and a channels-last one with its weights."""
    cfg = Config.fromfile(str(REPO_ROOT / R18_COCO)).model
    cfg.backbone.init_cfg = None
    cfg.data_preprocessor.batch_augments = None
    cl_cfg = copy.deepcopy(cfg)
    cl_cfg.channels_last = True
    reference = build(cfg).cuda()
    model = build(cl_cfg, seed=1).cuda()
    model.load_state_dict(reference.state_dict())
    return reference, model


def bf16_step(model, data):
    """The loss terms (bf16 autocast) and the gradients of one training step."""
    model.zero_grad()
    with torch.autocast('cuda', dtype=torch.bfloat16):
        losses = training_losses(model, data)
    sum(losses.values()).backward()
    return losses, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.gpu
def test_bf16_training_step_matches_the_default_layout_on_gpu():
    """One RT-DETRv2 R18 training step under bf16 autocast (2 images of 320 x 320) in both
    layouts from the same weights: the same total loss within bf16 rounding (1e-2), each term
    within 5e-2 (a near-tie in the matching may pair a query differently), and gradients as
    close to the float32 step's as the default layout's are.

    bf16 itself moves an untrained model's gradients far (on the CPU: 27% of the norm in the
    backbone, 4% in the head, in either layout), so the two bf16 steps are compared through their
    distance to the float32 one, per part of the model.
    """
    reference, model = r18_pair_on_gpu()
    data = preprocessed(reference, size=(320, 320))
    (expected, expected_grads), (losses, grads) = (bf16_step(m, data) for m in (reference, model))
    _, float32_grads = losses_and_grads(reference, data)
    total = sum(v.float() for v in expected.values())
    torch.testing.assert_close(sum(v.float() for v in losses.values()), total, rtol=1e-2, atol=0)
    for key, value in expected.items():
        torch.testing.assert_close(losses[key].float(), value.float(), rtol=5e-2, atol=1e-3,
                                   msg=key)
    for part in ('backbone', 'neck', 'decoder', 'bbox_head'):
        keys = [k for k in float32_grads if k.startswith(part + '.')]

        def flat(grads):
            return torch.cat([grads[k].float().flatten() for k in keys])

        exact = flat(float32_grads)
        error = (flat(grads) - exact).norm() / exact.norm()
        default_error = (flat(expected_grads) - exact).norm() / exact.norm()
        assert error <= 1.5 * default_error + 1e-3, (part, error.item(), default_error.item())
    for key, tensor in conv_tensors(model).items():
        assert tensor.is_contiguous(memory_format=CHANNELS_LAST), key
        if tensor.requires_grad:
            assert grads[key].is_contiguous(memory_format=CHANNELS_LAST), key


@pytest.mark.gpu
def test_channels_last_step_has_fewer_layout_transposes_on_gpu():
    """cuDNN's layout-transpose kernels (nchwToNhwc / nhwcToNchw) in one warmed-up bf16 training
    step: the channels-last model runs fewer than the default one (printed: run with -s)."""
    from torch.profiler import ProfilerActivity, profile

    def transposes(model, data):
        bf16_step(model, data)  # warm-up
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            bf16_step(model, data)
            torch.cuda.synchronize()
        return sum(e.count for e in prof.key_averages()
                   if 'nchwtonhwc' in e.key.lower() or 'nhwctonchw' in e.key.lower())

    reference, model = r18_pair_on_gpu()
    data = preprocessed(reference, size=(320, 320))
    default, channels_last = transposes(reference, data), transposes(model, data)
    print(f'layout transposes per step: default {default}, channels_last {channels_last}')
    assert channels_last < default, (default, channels_last)
