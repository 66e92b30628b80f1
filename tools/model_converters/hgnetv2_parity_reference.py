"""Runs the ORIGINAL HGNetv2 (Peterande/D-FINE) on a fixed input and saves weights + outputs.

First half of the HGNetv2 parity check; run it in an environment with the original's
dependencies (torch), never in detr_plugin's::

    python tools/model_converters/hgnetv2_parity_reference.py --root /work/ref/D-FINE \
        --arch B4 --freeze-norm --out hgnetv2_b4.pth

The original is imported from ``--root`` at run time and built with ``pretrained=False`` and
every stage returned, after ``torch.manual_seed(seed)``. Every weight gets seeded noise (so the
learnable affines leave 1 and 0), the BatchNorm statistics are set to those of the input (so
that activations neither vanish nor blow up through the random network) and then perturbed. The
file holds ``meta`` (arch, use_lab, freeze_norm, seed), ``state_dict`` (before any training-mode
forward), ``inputs`` (2, 3, S, S) in [0, 1], ``eval`` (the four stages' outputs in eval mode) and
``train`` (the same in training mode: BatchNorm on batch statistics unless frozen).
hgnetv2_parity_check.py converts the weights and compares detr_plugin's outputs with these.
"""
import argparse
import os
import sys
import types

import torch


def import_original(root: str):
    """The original's HGNetv2 class, without the package __init__ files (which import every
    model and their dependencies)."""
    sys.path.insert(0, root)
    for name in ('src', 'src.nn', 'src.nn.backbone'):
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(root, *name.split('.'))]
        sys.modules[name] = module
    from src.nn.backbone.hgnetv2 import HGNetv2
    return HGNetv2


def is_norm(module: torch.nn.Module) -> bool:
    return hasattr(module, 'running_var')  # nn.BatchNorm2d and the original's FrozenBatchNorm2d


@torch.no_grad()
def calibrate_and_perturb(model: torch.nn.Module, inputs: torch.Tensor,
                          generator: torch.Generator) -> None:
    """Each norm layer's running statistics := those of its input on ``inputs`` (one eval pass,
    layer after layer), then the mean moved by 0.1 std and the variance scaled by 0.8-1.2."""
    def set_stats(module, args):
        x = args[0]
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
        noise = torch.randn(mean.shape, generator=generator)
        module.running_mean.copy_(mean + 0.1 * var.sqrt() * noise)
        module.running_var.copy_(var * (0.8 + 0.4 * torch.rand(var.shape, generator=generator)))

    handles = [m.register_forward_pre_hook(set_stats) for m in model.modules() if is_norm(m)]
    model.eval()
    model(inputs)
    for handle in handles:
        handle.remove()


@torch.no_grad()
def perturb_weights(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded noise on every weight (not the running statistics): 0.1 relative on norm weights
    and biases and on the learnable affines, Kaiming-scaled on convolutions."""
    for name, tensor in model.state_dict().items():
        if not tensor.dtype.is_floating_point or name.endswith(('running_mean', 'running_var')):
            continue
        noise = torch.randn(tensor.shape, generator=generator)
        if tensor.dim() == 4:  # conv: keep the output scale (fan-in Kaiming for ReLU)
            fan_in = tensor[0].numel()
            tensor.copy_(noise * (2.0 / fan_in) ** 0.5)
        else:
            tensor.add_(0.1 * noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', required=True, help='the unpacked Peterande/D-FINE')
    parser.add_argument('--arch', required=True, choices=[f'B{i}' for i in range(7)])
    parser.add_argument('--use-lab', action='store_true')
    parser.add_argument('--freeze-norm', action='store_true',
                        help="the original's FrozenBatchNorm2d everywhere")
    parser.add_argument('--size', type=int, default=320, help='input height and width')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', required=True)
    args = parser.parse_args()

    HGNetv2 = import_original(os.path.abspath(args.root))
    torch.manual_seed(args.seed)
    model = HGNetv2(args.arch, use_lab=args.use_lab, return_idx=[0, 1, 2, 3], freeze_at=-1,
                    freeze_norm=args.freeze_norm, pretrained=False)
    generator = torch.Generator().manual_seed(args.seed)
    inputs = torch.rand(2, 3, args.size, args.size, generator=generator)
    perturb_weights(model, generator)
    calibrate_and_perturb(model, inputs, generator)
    state_dict = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.eval()
        eval_outputs = [o.clone() for o in model(inputs)]
        model.train()
        train_outputs = [o.clone() for o in model(inputs)]
    meta = dict(arch=args.arch, use_lab=args.use_lab, freeze_norm=args.freeze_norm,
                seed=args.seed, torch=str(torch.__version__))
    torch.save(dict(meta=meta, state_dict=state_dict, inputs=inputs, eval=eval_outputs,
                    train=train_outputs), args.out)
    print(f'{args.out}: {meta}, outputs {[tuple(o.shape) for o in eval_outputs]}, '
          f'eval output std {[round(o.std().item(), 3) for o in eval_outputs]}')


if __name__ == '__main__':
    main()
