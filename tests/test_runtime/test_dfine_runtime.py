"""D-FINE at run time: a short Runner training of the demo config and its resume, one training
step under CPU bf16 autocast with the losses in float32, and (GPU) 500 bf16 AMP iterations of
D-FINE S without NaN. 2-process gloo DDP with a rank whose images hold no box:
tests/test_runtime/test_ddp_cpu.py."""
import math

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

from detr_plugin.registry import MODELS
from detr_plugin.utils import register_all_modules

register_all_modules(init_default_scope=False)  # mmdet's modules too (the Runner's visualizer)

DFINE_DEMO = 'configs/dfine/dfine_r18vd_1xb8-demo.py'


class LossRecorder(Hook):
    """Every training iteration's logged losses (the total and each term)."""

    def __init__(self):
        self.iterations = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.iterations.append({name: float(torch.as_tensor(value).detach())
                                for name, value in outputs.items()})


def demo_runner_cfg(demo_runs, data, work_dir, max_epochs):
    cfg = Config.fromfile(str(demo_runs.REPO_ROOT / DFINE_DEMO))
    cfg.work_dir = str(work_dir)
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_begin=1000)
    cfg.train_dataloader.batch_size = 2  # 4 images: 2 iterations per epoch
    demo_runs.read_demo_data(cfg, data)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = 1
    return cfg


def test_runner_trains_the_demo_config_and_resumes(tmp_path, demo_runs):
    from mmengine.runner import Runner
    data = tmp_path / 'demo'
    demo_runs.make_tiny_dataset(data, num_train=4, empty_images=(3, ))
    work = tmp_path / 'work'

    runner = Runner.from_cfg(demo_runner_cfg(demo_runs, data, work, max_epochs=1))
    recorder = LossRecorder()
    runner.register_hook(recorder)
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    assert runner.iter == 2 and len(recorder.iterations) == 2
    for losses in recorder.iterations:
        assert {'loss', 'loss_vfl', 'loss_fgl', 'd0.loss_ddf', 'dn_loss_giou'} <= set(losses)
        assert all(math.isfinite(v) for v in losses.values()), losses
    after = runner.model.state_dict()
    # biases and norms have no weight decay: they move only by their gradients
    for key in ('bbox_head.reg_branches.2.layers.2.bias', 'bbox_head.lqe_branches.2.layers.1.bias',
                'bbox_head.pre_reg_branch.layers.2.bias', 'decoder.layers.0.gateway.gate.bias',
                'denoising.label_embed.weight', 'backbone.stem.1.bias'):
        assert not torch.equal(before[key], after[key]), key
    checkpoint = torch.load(work / 'epoch_1.pth', map_location='cpu', weights_only=False)
    assert checkpoint['meta']['iter'] == 2

    # resumed for a second epoch: the weights and AdamW's state continue (its step count reaches
    # 4; a restart from the weights only would count 2)
    cfg = demo_runner_cfg(demo_runs, data, work, max_epochs=2)
    cfg.resume = True
    cfg.load_from = str(work / 'epoch_1.pth')
    resumed = Runner.from_cfg(cfg)
    recorder = LossRecorder()
    resumed.register_hook(recorder)
    resumed.train()
    assert resumed.iter == 4 and len(recorder.iterations) == 2
    assert all(math.isfinite(v) for losses in recorder.iterations for v in losses.values())
    second = torch.load(work / 'epoch_2.pth', map_location='cpu', weights_only=False)
    assert second['meta']['epoch'] == 2 and second['meta']['iter'] == 4
    steps = {float(s['step']) for s in second['optimizer']['state'].values()}
    assert steps == {4.0}


def floating_to_float64(x):
    """Every floating tensor of ``x`` (tensors, lists, named tuples, None) in float64."""
    if isinstance(x, torch.Tensor):
        return x.double() if x.is_floating_point() else x
    if isinstance(x, tuple) and hasattr(x, '_fields'):
        return type(x)(*(floating_to_float64(v) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(floating_to_float64(v) for v in x)
    return x


def make_batch(boxes_per_image, size=64):
    """Images of one size with gt boxes (xyxy pixels), labels 0, 1, 2, 0, ..."""
    inputs = torch.rand(len(boxes_per_image), 3, size, size,
                        generator=torch.Generator().manual_seed(0)) * 255
    samples = []
    for boxes in boxes_per_image:
        s = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                        scale_factor=(1., 1.), batch_input_shape=(size, size),
                                        pad_shape=(size, size)))
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        s.gt_instances = InstanceData(bboxes=boxes, labels=torch.arange(len(boxes)) % 3)
        samples.append(s)
    return inputs, samples


def test_bf16_autocast_training_step_has_float32_losses():
    """One training step of the D-FINE demo model under CPU bf16 autocast: the decoder runs in
    bf16, the losses come out in float32, finite, and equal to the head's loss recomputed in
    float64 from the same (bf16) decoder outputs (a loss computed in bf16 would be ~1e-2 off);
    every gradient is finite."""
    cfg = Config.fromfile(DFINE_DEMO).model
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        model = MODELS.build(cfg)
    model.train()
    decoded = []
    model.decoder.register_forward_hook(lambda module, args, out: decoded.append(out))
    inputs, samples = make_batch([[[4, 4, 30, 40], [10, 20, 60, 50], [33, 2, 63, 20]], []])
    data = model.data_preprocessor(dict(inputs=list(inputs), data_samples=samples), training=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = model(**data, mode='loss')
    outputs = decoded[0]
    assert outputs.logits.dtype == torch.bfloat16  # autocast reached the decoder and head
    assert outputs.extras.dtype == torch.bfloat16  # the edge distributions
    assert all(v.dtype == torch.float32 for v in losses.values())
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    head = model.bbox_head.double()  # up and reg_scale
    gt = head.ground_truth(data['data_samples'], data['inputs'])
    with torch.no_grad():
        reference = head.loss(floating_to_float64(outputs), floating_to_float64(gt))
    assert set(reference) == set(losses)
    for name, value in losses.items():
        torch.testing.assert_close(value.detach().double(), reference[name], rtol=1e-5,
                                   atol=1e-6, msg=name)


DFINE_S = 'configs/dfine/dfine_hgnetv2-s_8xb4-132e_coco.py'


def dfine_s_demo_cfg(demo_runs, data, work_dir, image_size: int, batch_size: int,
                     max_epochs: int, amp: bool) -> Config:
    """D-FINE S (its COCO config's model with its multi-scale batch resize; 3 classes, no
    pretrained weights) in the D-FINE demo recipe (AdamW 2e-4, gradient clipping 0.1, constant
    learning rate for the first 13 epochs) on the demo data resized to ``image_size``, with bf16
    AMP as ``tools/train.py --amp`` sets it when ``amp``."""
    cfg = demo_runner_cfg(demo_runs, data, work_dir, max_epochs)
    cfg.model = Config.fromfile(str(demo_runs.REPO_ROOT / DFINE_S)).model
    cfg.model.backbone.init_cfg = None
    cfg.model.bbox_head.num_classes = 3
    cfg.train_dataloader.batch_size = batch_size
    resize = next(t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'Resize')
    resize.scale = (image_size, image_size)
    cfg.default_hooks.checkpoint.interval = max_epochs
    if amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.dtype = 'bfloat16'
    return cfg


@pytest.mark.gpu
def test_dfine_s_trains_500_bf16_amp_iterations_without_nan(tmp_path, demo_runs):
    """The issue's mixed-precision acceptance (the originals' users hit NaN there): D-FINE S for
    500 iterations (10 epochs of the 400 generated demo images, resized to 640 x 640, then to the
    config's multi-scale sizes, at batch 8) under bf16 AMP on one GPU. Every iteration's loss
    terms are finite, the decoder ran in bf16, and the loss went down. The first and last 50
    iterations' mean losses are printed (pytest -s) for docs/benchmarks.md."""
    from mmengine.runner import Runner
    data = tmp_path / 'demo'
    demo_runs.load_make_demo_dataset().make_demo_dataset(str(data), seed=0, num_train=400,
                                                         num_val=8)
    cfg = dfine_s_demo_cfg(demo_runs, data, tmp_path / 'work', image_size=640, batch_size=8,
                           max_epochs=10, amp=True)
    cfg.train_dataloader.num_workers = 4
    runner = Runner.from_cfg(cfg)
    recorder = LossRecorder()
    runner.register_hook(recorder)
    dtypes = set()
    runner.model.decoder.register_forward_hook(
        lambda module, args, out: dtypes.add(out.logits.dtype))
    runner.train()
    assert len(recorder.iterations) == 500
    bad = [(i, name, v) for i, losses in enumerate(recorder.iterations)
           for name, v in losses.items() if not math.isfinite(v)]
    assert bad == [], bad[:10]
    assert dtypes == {torch.bfloat16}
    first = sum(it['loss'] for it in recorder.iterations[:50]) / 50
    last = sum(it['loss'] for it in recorder.iterations[-50:]) / 50
    print(f'D-FINE S bf16 AMP: mean loss of iterations 1-50 {first:.2f}, 451-500 {last:.2f}')
    assert last < first
