"""``RTDETR(cuda_graph=True)``: the backbone and hybrid encoder replayed as CUDA graphs must train
as the eager model does. Reference: the same model with ``cuda_graph=False`` and the same
weights, batches and random draws (denoising noise), over steps at two input sizes (a capture
per size, then replays), with AdamW updates in between."""
import pathlib

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.structures import InstanceData

from detr_plugin.registry import MODELS

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
R18_COCO = 'configs/rtdetrv2/rtdetrv2_r18vd_8xb2-120e_coco.py'
DFINE_N_COCO = 'configs/dfine/dfine_hgnetv2-n_8xb16-160e_coco.py'
DEMO = 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py'


def build(config: str, cuda_graph: bool, device: str, **denoising):
    cfg = Config.fromfile(str(REPO_ROOT / config)).model
    cfg.backbone.init_cfg = None
    cfg.data_preprocessor.batch_augments = None
    cfg.denoising.update(denoising)
    cfg.cuda_graph = cuda_graph
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    return model.to(device).train()


def inputs(side: int, device: str, seed: int):
    """Two images (side x side, in [0, 1]) with 3 and 1 boxes (xyxy pixels)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, side, side, generator=g).to(device)
    samples = []
    for n in (3, 1):
        xy = torch.rand(n, 2, generator=g) * side * 0.6
        wh = torch.rand(n, 2, generator=g) * side * 0.3 + 4
        s = DetDataSample(metainfo=dict(img_shape=(side, side), batch_input_shape=(side, side),
                                        pad_shape=(side, side), ori_shape=(side, side)))
        s.gt_instances = InstanceData(bboxes=torch.cat([xy, xy + wh], 1).to(device),
                                      labels=torch.arange(n).to(device))
        samples.append(s)
    return images, samples


def train(model, sides, device, amp=None):
    """Per step: the loss terms; AdamW after each step; the same draws for every model."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    history = []
    for step, side in enumerate(sides):
        images, samples = inputs(side, device, seed=step)
        torch.manual_seed(100 + step)
        optimizer.zero_grad()
        with torch.autocast(device, dtype=amp or torch.float32, enabled=amp is not None):
            losses = model.loss(images, samples)
        sum(losses.values()).backward()
        optimizer.step()
        history.append({k: v.detach().float() for k, v in losses.items()})
    return history


def test_cpu_training_is_the_eager_models():
    """Off CUDA the option changes nothing: bitwise the default model's losses."""
    sides = (64, 96)
    expected = train(build(DEMO, False, 'cpu'), sides, 'cpu')
    model = build(DEMO, True, 'cpu')
    for got, want in zip(train(model, sides, 'cpu'), expected):
        for key in want:
            assert torch.equal(got[key], want[key]), key
    assert model.training_graphs.captures == {}


def step_from(model, side: int, step: int, amp, dtype=torch.float32):
    """One step's loss terms and parameter gradients (by name, float64) from the model's
    weights; the inputs in ``dtype``."""
    images, samples = inputs(side, 'cuda', seed=step)
    for sample in samples:
        sample.gt_instances.bboxes = sample.gt_instances.bboxes.to(dtype)
    torch.manual_seed(100 + step)
    model.zero_grad(set_to_none=True)
    with torch.autocast('cuda', dtype=amp or torch.float32, enabled=amp is not None):
        losses = model.loss(images.to(dtype), samples)
    sum(losses.values()).backward()
    grads = {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach().double() for k, v in losses.items()}, grads


@pytest.fixture
def no_tf32():
    """fp32 convolutions and matmuls in fp32 (TF32 rounds to 10 bits: its error would hide
    small wrong gradients)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.parametrize('amp', [None, torch.bfloat16])
@pytest.mark.parametrize('config', [R18_COCO, DFINE_N_COCO])
def test_graphed_steps_are_as_exact_as_eager_steps_on_gpu(config, amp, no_tf32):
    """RT-DETRv2 R18 and D-FINE N (HGNetv2: frozen stem and norms, learned scalars) at 320,
    384, 320, 384, 320 (captures, a grown buffer, replays). Each step starts all models from the
    eager model's weights (AdamW-updated in between). Reference: the same step in float64. Each
    gradient of the graphed model must be as close to it as twice the eager model's (same
    precision) plus a small term, both over the gradient's scale: another summation order moves
    a gradient by rounding (which a sum over a whole feature map, as for HGNetv2's scalars,
    amplifies), a wrong or missing contribution by its own size. Loss terms and BatchNorm
    statistics must match the eager model's. Box noise is off: float64 boxes would draw other
    noise on CUDA."""
    eager, graphed, exact = (build(config, cuda_graph, 'cuda', box_noise_scale=0.0)
                             for cuda_graph in (False, True, False))
    exact.double()
    optimizer = torch.optim.AdamW(eager.parameters(), lr=1e-4)
    # the small term, over the larger of a gradient's size and 1e-3 of the step's largest
    # gradient (three biases before batch-normalised layers have zero true gradients); in bf16
    # it only separates wrong dtypes or scales from rounding, fp32 is the precise check
    slack, loss_tol = (1e-4, 1e-4) if amp is None else (0.3, 2e-2)
    for step, side in enumerate((320, 384, 320, 384, 320)):
        for other in (graphed, exact):
            other.load_state_dict(eager.state_dict())  # in place: the graphs' addresses stay
        _, exact_grads = step_from(exact, side, step, None, torch.float64)
        eager_losses, eager_grads = step_from(eager, side, step, amp)
        graphed_losses, graphed_grads = step_from(graphed, side, step, amp)
        assert graphed_grads.keys() == eager_grads.keys() == exact_grads.keys(), \
            f'step {step}: gradients differ in {sorted(graphed_grads.keys() ^ eager_grads.keys())}'
        for key, want in eager_losses.items():
            got = graphed_losses[key]
            assert torch.allclose(got, want, rtol=loss_tol, atol=0), f'step {step}: loss {key}'
        floor = 1e-3 * max(float(g.abs().max()) for g in exact_grads.values())
        errors = {}  # per gradient: graphed and eager error over its scale
        for name, want in exact_grads.items():
            scale = max(float(want.abs().max()), floor)
            errors[name] = tuple(float((grads[name] - want).abs().max()) / scale
                                 for grads in (graphed_grads, eager_grads))
        name, (graphed_error, eager_error) = max(errors.items(),
                                                 key=lambda kv: kv[1][0] - 2 * kv[1][1])
        print(f'step {step} ({side}): {name} graphed {graphed_error:.1e} eager '
              f'{eager_error:.1e}; worst eager {max(e for _, e in errors.values()):.1e}')
        assert graphed_error <= 2 * eager_error + slack, f'step {step} at {side}: gradient ' \
            f'{name} off float64 by {graphed_error:.1e} of its scale, eager {eager_error:.1e}'
        state, reference = graphed.state_dict(), eager.state_dict()
        for key, want in reference.items():
            if 'running' in key:
                assert torch.allclose(state[key], want, rtol=loss_tol, atol=1e-6), key
        optimizer.step()
    # 384 outgrew the buffers of 320 (dropped, captured again at step 2); steps 3, 4 replay
    assert len(graphed.training_graphs.captures) == 2
