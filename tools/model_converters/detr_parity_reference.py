"""Runs an ORIGINAL DETR or Deformable DETR on a fixed batch and saves its weights and outputs.

First half of the DETR / Deformable DETR parity check of docs/parity.md; run it in an environment
with the original's dependencies (torch, torchvision, scipy; DETR also packaging), never in
detr_plugin's::

    python tools/model_converters/detr_parity_reference.py --root /work/ref/ddetr \\
        --model deformable_detr --variant refine --out-dir /work/ref/parity
    python tools/model_converters/detr_parity_reference.py --root /work/ref/detr \\
        --model detr --out-dir /work/ref/parity

``--root`` is an unpacked fundamentalvision/Deformable-DETR or facebookresearch/detr; its code is
imported and run, not copied or modified. Three run-time adjustments make it importable on a
current CPU-only torch (see ``import_deformable_detr`` / ``import_detr``). The model is built with
the documented arguments, every weight is perturbed with seeded noise (``perturb``), and two
normalized images of different sizes go through it in eval mode. Writes into --out-dir:

* ``<name>.pth``: ``{'model': state_dict}``, the original checkpoint layout the converters read;
* ``<name>_io.pth``: ``images`` (list of (3, h, w)), ``pred_logits`` (bs, Q, K), ``pred_boxes``
  (bs, Q, 4), ``aux_logits`` / ``aux_boxes`` (L - 1, bs, Q, .) and, for two-stage,
  ``enc_logits`` (bs, N, K) / ``enc_boxes`` (bs, N, 4): what compare_with_original.py reads;

with ``<name>`` = ``ddetr_plain``, ``ddetr_refine``, ``ddetr_twostage`` or ``detr_r50``.
"""
import argparse
import os
import sys
import types
from argparse import Namespace

import torch

# variant -> (with_box_refine, two_stage, seed index i: torch.manual_seed(i), perturbation 10 + i)
DEFORMABLE_VARIANTS = {'plain': (False, False, 0), 'refine': (True, False, 1),
                       'twostage': (True, True, 2)}
DETR_BUILD_SEED, DETR_PERTURB_SEED = 0, 20
IMAGE_SEED = 1
IMAGE_SHAPES = ((3, 200, 264), (3, 152, 200))


class PytorchMSDeformAttnFunction:
    """Stands in for the compiled ``MSDeformAttnFunction``: the same ``apply`` signature, computed
    by the repository's own PyTorch reference ``ms_deform_attn_core_pytorch``."""

    def __init__(self, core):
        self.core = core

    def apply(self, value, spatial_shapes, level_start_index, locations, weights, im2col_step):
        return self.core(value, spatial_shapes, locations, weights)


def import_deformable_detr(root: str) -> types.SimpleNamespace:
    """The original's builders, with (1) an empty ``MultiScaleDeformableAttention`` module so that
    the CUDA-extension import succeeds and its PyTorch path in its place, (2) no ImageNet download
    (``is_main_process`` answers False), (3) a torchvision version its ``float(v[:3])`` parses."""
    import torchvision
    torchvision.__version__ = '0.9.0'
    sys.modules['MultiScaleDeformableAttention'] = types.ModuleType('MultiScaleDeformableAttention')
    sys.path.insert(0, root)
    import models.backbone
    import models.ops.modules.ms_deform_attn as ms_deform_attn
    from models.deformable_detr import DeformableDETR
    from models.deformable_transformer import build_deforamble_transformer
    from models.ops.functions.ms_deform_attn_func import ms_deform_attn_core_pytorch
    from util.misc import nested_tensor_from_tensor_list
    ms_deform_attn.MSDeformAttnFunction = PytorchMSDeformAttnFunction(ms_deform_attn_core_pytorch)
    models.backbone.is_main_process = lambda: False
    return types.SimpleNamespace(
        build_backbone=models.backbone.build_backbone,
        build_transformer=build_deforamble_transformer, model_class=DeformableDETR,
        batch=nested_tensor_from_tensor_list, frozen_bn=models.backbone.FrozenBatchNorm2d)


def import_detr(root: str) -> types.SimpleNamespace:
    """The original's builders, with no ImageNet download (``is_main_process`` answers False)."""
    sys.path.insert(0, root)
    import models.backbone
    from models.detr import DETR
    from models.transformer import build_transformer
    from util.misc import nested_tensor_from_tensor_list
    models.backbone.is_main_process = lambda: False
    return types.SimpleNamespace(
        build_backbone=models.backbone.build_backbone, build_transformer=build_transformer,
        model_class=DETR, batch=nested_tensor_from_tensor_list,
        frozen_bn=models.backbone.FrozenBatchNorm2d)


def build_deformable_detr(original, with_box_refine: bool, two_stage: bool) -> torch.nn.Module:
    args = Namespace(hidden_dim=256, position_embedding='sine', lr_backbone=2e-5, masks=False,
                     num_feature_levels=4, backbone='resnet50', dilation=False, nheads=8,
                     enc_layers=6, dec_layers=6, dim_feedforward=1024, dropout=0.1,
                     enc_n_points=4, dec_n_points=4, two_stage=two_stage, num_queries=300)
    return original.model_class(
        original.build_backbone(args), original.build_transformer(args), num_classes=91,
        num_queries=300, num_feature_levels=4, aux_loss=True, with_box_refine=with_box_refine,
        two_stage=two_stage)


def build_detr(original) -> torch.nn.Module:
    args = Namespace(hidden_dim=256, position_embedding='sine', lr_backbone=1e-5, masks=False,
                     backbone='resnet50', dilation=False, dropout=0.1, nheads=8,
                     dim_feedforward=2048, enc_layers=6, dec_layers=6, pre_norm=False)
    return original.model_class(original.build_backbone(args), original.build_transformer(args),
                                num_classes=91, num_queries=100, aux_loss=True)


@torch.no_grad()
def perturb(model: torch.nn.Module, frozen_bn: type, generator: torch.Generator) -> None:
    """No weight keeps a structured init (zero offsets / attention weights / last box layer,
    identity frozen BatchNorms): N(0, 0.02^2) is added to every parameter, in ``named_parameters``
    order; then each frozen BatchNorm, in module order, gets running_var ~ U(0.5, 1.5),
    running_mean ~ N(0, 0.1^2), bias ~ N(0, 0.1^2), weight ~ U(0.5, 1.5)."""
    for _, param in model.named_parameters():
        param.add_(0.02 * torch.randn(param.shape, generator=generator))
    for module in model.modules():
        if isinstance(module, frozen_bn):
            n = module.running_var.shape
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.bias.copy_(0.1 * torch.randn(n, generator=generator))
            module.weight.copy_(0.5 + torch.rand(n, generator=generator))


def fixed_images():
    """Two normalized images of different sizes (generator seeded ``IMAGE_SEED``)."""
    generator = torch.Generator().manual_seed(IMAGE_SEED)
    return [torch.randn(shape, generator=generator) for shape in IMAGE_SHAPES]


@torch.no_grad()
def reference_outputs(model: torch.nn.Module, batch_fn, images) -> dict:
    """Eval-mode outputs under compare_with_original.py's names."""
    model.eval()
    out = model(batch_fn(images))
    io = dict(images=images, pred_logits=out['pred_logits'], pred_boxes=out['pred_boxes'],
              aux_logits=torch.stack([a['pred_logits'] for a in out['aux_outputs']]),
              aux_boxes=torch.stack([a['pred_boxes'] for a in out['aux_outputs']]))
    if 'enc_outputs' in out:
        io.update(enc_logits=out['enc_outputs']['pred_logits'],
                  enc_boxes=out['enc_outputs']['pred_boxes'])
    return io


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', required=True, help='unpacked original repository')
    parser.add_argument('--model', required=True, choices=['deformable_detr', 'detr'])
    parser.add_argument('--variant', default='plain', choices=sorted(DEFORMABLE_VARIANTS),
                        help='Deformable DETR variant (ignored for DETR)')
    parser.add_argument('--out-dir', required=True)
    args = parser.parse_args()

    if args.model == 'deformable_detr':
        original = import_deformable_detr(args.root)
        with_box_refine, two_stage, i = DEFORMABLE_VARIANTS[args.variant]
        torch.manual_seed(i)
        model = build_deformable_detr(original, with_box_refine, two_stage)
        perturb_seed, name = 10 + i, f'ddetr_{args.variant}'
    else:
        original = import_detr(args.root)
        torch.manual_seed(DETR_BUILD_SEED)
        model = build_detr(original)
        perturb_seed, name = DETR_PERTURB_SEED, 'detr_r50'
    perturb(model, original.frozen_bn, torch.Generator().manual_seed(perturb_seed))
    io = reference_outputs(model, original.batch, fixed_images())

    os.makedirs(args.out_dir, exist_ok=True)
    checkpoint = os.path.join(args.out_dir, f'{name}.pth')
    torch.save({'model': model.state_dict()}, checkpoint)
    torch.save(io, os.path.join(args.out_dir, f'{name}_io.pth'))
    shapes = ', '.join(f'{k} {tuple(v.shape)}' for k, v in io.items() if k != 'images')
    print(f'{name}: {len(model.state_dict())} tensors -> {checkpoint}; {shapes}')


if __name__ == '__main__':
    main()
