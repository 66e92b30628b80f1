"""``RTDETR(cuda_graph=True)``: the backbone and hybrid encoder replayed as CUDA graphs must train
as the eager model does. Reference: the same model with ``cuda_graph=False`` and the same
weights, batches and random draws (denoising noise), over steps at two input sizes (a capture
per size, then replays), with AdamW updates in between: in fp32 with deterministic kernels
bitwise, in bf16 the forward bitwise and the gradients against a float64 step."""
import pathlib

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.structures import InstanceData
from torch.nn.attention import SDPBackend, sdpa_kernel

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
    """One step's loss terms and parameter gradients (by name) from the model's weights; the
    inputs in ``dtype``."""
    images, samples = inputs(side, 'cuda', seed=step)
    for sample in samples:
        sample.gt_instances.bboxes = sample.gt_instances.bboxes.to(dtype)
    torch.manual_seed(100 + step)
    model.zero_grad(set_to_none=True)
    with torch.autocast('cuda', dtype=amp or torch.float32, enabled=amp is not None):
        losses = model.loss(images.to(dtype), samples)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.fixture
def deterministic():
    """Every kernel of a step deterministic: our MSDA op's backward without float atomics (it
    follows the global switch), cuDNN's deterministic algorithms, attention by the math backend
    (the fused ones' backward in bf16 is not), no TF32. Otherwise two eager steps from the same
    weights already differ by rounding, which HGNetv2's learned scalars (each a sum over a whole
    feature map) amplify to 1e-4 of their size."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    with sdpa_kernel(SDPBackend.MATH):
        yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
     torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = saved[2:]


def running_stats(model) -> dict:
    """Copies of the model's BatchNorm running statistics, by name."""
    return {k: v.clone() for k, v in model.state_dict().items() if 'running' in k}


def differences(got: dict, want: dict) -> str:
    """'' if every tensor of ``want`` equals ``got``'s bitwise, else the count and the worst."""
    differ = {k: float((got[k].double() - v.double()).abs().max()) for k, v in want.items()
              if not torch.equal(got[k], v)}
    if not differ:
        return ''
    worst = max(differ, key=differ.get)
    return f'{len(differ)} of {len(want)} differ, most {worst} by {differ[worst]:.1e}'


@pytest.mark.gpu
@pytest.mark.parametrize('config', [R18_COCO, DFINE_N_COCO])
def test_fp32_graphed_steps_equal_eager_steps_bitwise_on_gpu(config, deterministic):
    """fp32, RT-DETRv2 R18 and D-FINE N (HGNetv2: frozen stem and norms, learned scalars) at 320,
    384, 320, 384, 320 (captures, a grown buffer, replays), denoising on. Each step starts both
    models from the same weights (AdamW-updated in between). With deterministic kernels the eager
    step repeats bitwise (checked, as the premise); the graphed step runs the same kernels, so
    its loss terms, gradients and BatchNorm statistics must equal the eager step's bitwise."""
    eager, graphed = (build(config, cuda_graph, 'cuda') for cuda_graph in (False, True))
    optimizer = torch.optim.AdamW(eager.parameters(), lr=1e-4)
    for step, side in enumerate((320, 384, 320, 384, 320)):
        start = {k: v.clone() for k, v in eager.state_dict().items()}
        runs = []
        for model in (eager, eager, graphed):
            model.load_state_dict(start)  # in place: the graphs' addresses stay
            losses, grads = step_from(model, side, step, None)
            runs.append((losses, grads, running_stats(model)))
        want, again, got = runs
        names = ('losses', 'gradients', 'BatchNorm statistics')
        for name, a, b in zip(names, again, want):
            assert not differences(a, b), \
                f'step {step}: the eager step does not repeat here ({name}: {differences(a, b)})'
        for name, a, b in zip(names, got, want):
            assert not differences(a, b), f'step {step} at {side}: graphed {name}: ' \
                f'{differences(a, b)}'
        optimizer.step()
    # 384 outgrew the buffers of 320 (dropped, captured again at step 2); steps 3, 4 replay
    assert len(graphed.training_graphs.captures) == 2


@pytest.mark.gpu
@pytest.mark.parametrize('config', [R18_COCO, pytest.param(DFINE_N_COCO, marks=pytest.mark.xfail(
    reason='open: in bf16 with deterministic cuDNN algorithms the graphed backward puts some of '
           'HGNetv2\'s learned scalars 10-20x further from float64 than the eager one (not seen '
           'without them; docs/benchmarks.md, CUDA graphs)'))])
def test_bf16_graphed_steps_are_as_exact_as_eager_steps_on_gpu(config, deterministic):
    """bf16 autocast, same models and schedule as the fp32 test (denoising's box noise off:
    float64 boxes would draw other noise). The graphed forward equals the eager one bitwise (loss
    terms, BatchNorm statistics), but its backward rounds differently, so the gradients'
    reference is the same step in float64: each must be as close to it as twice the eager
    model's plus 0.3, both over the gradient's scale (a wrong dtype, scale or missing
    contribution is off by its own size). Gradients that bf16 itself gets wrong (the eager
    one off by more than 0.1: HGNetv2's learned scalars, sums over a whole feature map, up to
    several times their size) cannot tell and are left to the fp32 test."""
    eager, graphed, exact = (build(config, cuda_graph, 'cuda', box_noise_scale=0.0)
                             for cuda_graph in (False, True, False))
    exact.double()
    optimizer = torch.optim.AdamW(eager.parameters(), lr=1e-4)
    for step, side in enumerate((320, 384, 320, 384, 320)):
        for other in (graphed, exact):
            other.load_state_dict(eager.state_dict())  # in place: the graphs' addresses stay
        _, exact_grads = step_from(exact, side, step, None, torch.float64)
        eager_losses, eager_grads = step_from(eager, side, step, torch.bfloat16)
        graphed_losses, graphed_grads = step_from(graphed, side, step, torch.bfloat16)
        assert not differences(graphed_losses, eager_losses), \
            f'step {step}: graphed losses: {differences(graphed_losses, eager_losses)}'
        stats, reference = running_stats(graphed), running_stats(eager)
        assert not differences(stats, reference), \
            f'step {step}: graphed BatchNorm statistics: {differences(stats, reference)}'
        assert graphed_grads.keys() == eager_grads.keys() == exact_grads.keys(), \
            f'step {step}: gradients differ in {sorted(graphed_grads.keys() ^ eager_grads.keys())}'
        # the scale: the larger of a gradient's size and 1e-3 of the step's largest gradient
        # (three biases before batch-normalised layers have zero true gradients)
        floor = 1e-3 * max(float(g.abs().max()) for g in exact_grads.values())
        errors = {}  # per gradient bf16 can resolve: graphed and eager error over its scale
        for name, want in exact_grads.items():
            scale = max(float(want.abs().max()), floor)
            graphed_error, eager_error = (float((grads[name] - want).abs().max()) / scale
                                          for grads in (graphed_grads, eager_grads))
            if eager_error <= 0.1:
                errors[name] = graphed_error, eager_error
        name, (graphed_error, eager_error) = max(errors.items(),
                                                 key=lambda kv: kv[1][0] - 2 * kv[1][1])
        print(f'step {step} ({side}): {len(errors)} of {len(exact_grads)} gradients checked; '
              f'{name} graphed {graphed_error:.1e} eager {eager_error:.1e}')
        assert graphed_error <= 2 * eager_error + 0.3, f'step {step} at {side}: gradient ' \
            f'{name} off float64 by {graphed_error:.1e} of its scale, eager {eager_error:.1e}'
        optimizer.step()
    assert len(graphed.training_graphs.captures) == 2
