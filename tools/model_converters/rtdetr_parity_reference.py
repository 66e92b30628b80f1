"""Runs the ORIGINAL RT-DETR (rtdetr_pytorch) on a fixed input and saves weights + outputs.

First half of the parity check of docs/parity.md; run it in an environment with the original's
dependencies (torch, torchvision, scipy, pyyaml), never in detr_plugin's::

    python tools/model_converters/rtdetr_parity_reference.py \
        --rtdetr-root /work/ref/rtdetr_pytorch --config rtdetr_r18vd_6x_coco.yml --out r18.pth

The model is built from the original's own YAML config (no pretrained download, no multi-scale)
after ``torch.manual_seed(seed)``, every parameter is perturbed with seeded noise (so that
zero-initialized heads and offsets are exercised), the BatchNorm statistics are calibrated on the
input and then perturbed too, and the file written holds:
``state_dict`` (before any training-mode forward), ``inputs`` (bs, 3, 640, 640) in [0, 1],
``targets`` (cxcywh normalized, one image without boxes), ``eval`` (pred_logits, pred_boxes and
the post-processed top-300) and ``train`` (every output of a training-mode forward with
denoising, drawn after ``torch.manual_seed(seed)``, and the criterion's losses). The second half,
rtdetr_parity_check.py, converts the weights and compares detr_plugin's outputs with these.
"""
import argparse
import os
import sys
import types
from typing import Tuple

import torch


def import_original(root: str):
    """Imports the original's model code without its dataset package (which needs the
    torchvision 0.15 ``datapoints`` API) or optional backbones (which need transformers)."""
    sys.path.insert(0, root)
    for name in ('src', 'src.nn', 'src.nn.backbone'):  # empty packages: skip their __init__
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(root, *name.split('.'))]
        sys.modules[name] = module
    import src.core  # noqa: F401  (registry and YAMLConfig)
    import src.nn.backbone.presnet  # noqa: F401  (registers PResNet)
    import src.zoo.rtdetr  # noqa: F401  (registers RTDETR, HybridEncoder, decoder, criterion)
    from src.core import YAMLConfig
    return YAMLConfig


@torch.no_grad()
def perturb(model: torch.nn.Module, generator: torch.Generator, stats: bool,
            constants: Tuple[str, ...] = ()) -> None:
    """Seeded noise, in place, on the float tensors of the state dict: the BatchNorm statistics
    (``stats=True``, relative to their own scale) or everything else (``stats=False``) except
    the buffers whose names end with one of ``constants`` (fixed tables, not weights).

    Non-persistent buffers (the encoder's cached position embedding) are left alone: the
    checkpoint does not carry them."""
    for name, tensor in model.state_dict().items():
        is_stat = name.endswith(('running_mean', 'running_var'))
        if (not tensor.dtype.is_floating_point or is_stat != stats
                or name.endswith(constants)):
            continue
        noise = torch.randn(tensor.shape, generator=generator)
        if name.endswith('running_var'):
            tensor.mul_(1 + 0.4 * (torch.rand(tensor.shape, generator=generator) - 0.5))
        elif name.endswith('running_mean'):
            std = model.state_dict()[name[:-len('mean')] + 'var'].sqrt()
            tensor.add_(0.1 * std * noise)
        else:
            tensor.add_(0.02 * noise)


@torch.no_grad()
def calibrate_batchnorm(model: torch.nn.Module, inputs: torch.Tensor) -> None:
    """Sets every BatchNorm's running statistics to those of its own input on ``inputs``, in one
    eval pass (each layer already sees the calibrated layers before it).

    With random weights the activations of a deep network shrink layer after layer, and default
    statistics (mean 0, var 1) would make the eval-mode features nearly constant over the image:
    every encoder score would then tie with every other to 1e-6, and which 300 tokens the query
    selection takes would be decided by rounding. Calibrated statistics keep features spread as a
    trained model's are.
    """
    def set_stats(module, args):
        x = args[0]
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3), unbiased=False))

    handles = [m.register_forward_pre_hook(set_stats) for m in model.modules()
               if hasattr(m, 'running_var') and hasattr(m, 'running_mean')]
    model.eval()
    model(inputs)
    for handle in handles:
        handle.remove()


def fixed_targets():
    """Image 0: three boxes; image 1: none (exercises denoising padding)."""
    return [dict(labels=torch.tensor([3, 17, 56]),
                 boxes=torch.tensor([[0.30, 0.40, 0.20, 0.30],
                                     [0.70, 0.60, 0.40, 0.50],
                                     [0.52, 0.21, 0.08, 0.10]])),
            dict(labels=torch.zeros(0, dtype=torch.long), boxes=torch.zeros(0, 4))]


def detach(outputs):
    if isinstance(outputs, torch.Tensor):
        return outputs.detach().clone()
    if isinstance(outputs, dict):
        return {k: detach(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(detach(v) for v in outputs)
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rtdetr-root', required=True, help='path of rtdetr_pytorch/')
    parser.add_argument('--config', default='rtdetr_r18vd_6x_coco.yml',
                        help='file name under configs/rtdetr/')
    parser.add_argument('--out', required=True)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--batch-size', type=int, default=2)
    args = parser.parse_args()

    YAMLConfig = import_original(args.rtdetr_root)
    cfg = YAMLConfig(os.path.join(args.rtdetr_root, 'configs', 'rtdetr', args.config))
    cfg.yaml_cfg['PResNet']['pretrained'] = False
    cfg.yaml_cfg['RTDETR']['multi_scale'] = None
    torch.manual_seed(args.seed)  # the initial weights, so that a rerun makes the same file
    model, criterion, postprocessor = cfg.model, cfg.criterion, cfg.postprocessor
    postprocessor.remap_mscoco_category = False  # contiguous labels 0..79, as mmdet's
    generator = torch.Generator().manual_seed(args.seed)
    inputs = torch.rand(args.batch_size, 3, 640, 640, generator=generator)
    perturb(model, generator, stats=False)
    calibrate_batchnorm(model, inputs)
    perturb(model, generator, stats=True)
    targets = fixed_targets()[:args.batch_size]
    state_dict = {k: v.clone() for k, v in model.state_dict().items()}

    model.eval()
    with torch.no_grad():
        out = model(inputs)
        sizes = torch.tensor([[640, 640]] * args.batch_size)
        results = postprocessor(out, sizes)
    eval_outputs = dict(pred_logits=out['pred_logits'], pred_boxes=out['pred_boxes'],
                        results=results)

    model.train()
    torch.manual_seed(args.seed)
    out = model(inputs, targets)
    losses = {k: float(v.detach()) for k, v in criterion(out, targets).items()}
    train_outputs = dict(detach(out), losses=losses)

    torch.save(dict(config=args.config, seed=args.seed, state_dict=state_dict, inputs=inputs,
                    targets=targets, eval=detach(eval_outputs), train=train_outputs,
                    torch_version=torch.__version__), args.out)
    print(f'{args.config}: {len(state_dict)} tensors, {len(losses)} losses -> {args.out}')


if __name__ == '__main__':
    main()
