"""Runs the ORIGINAL D-FINE (or DEIM-D-FINE) transformer and criterion on fixed inputs and saves
weights + outputs.

First half of the D-FINE decoder/head parity check; run it in an environment with the
original's dependencies (torch, torchvision, scipy, pyyaml), never in detr_plugin's::

    python tools/model_converters/dfine_parity_reference.py --root /work/ref/D-FINE \\
        --sizes n s l --out dfine_transformer.pth
    python tools/model_converters/dfine_parity_reference.py --root /work/ref/DEIM --deim \\
        --sizes s --out deim_transformer.pth

For each size the ``DFINETransformer`` and the criterion are built from the original's YAML
config (D-FINE: configs/dfine/dfine_hgnetv2_<size>_coco.yml; DEIM:
configs/deim_dfine/deim_hgnetv2_<size>_coco.yml) with 80 classes, after
``torch.manual_seed(seed)``; every weight gets seeded noise (as rtdetr_parity_reference.py does;
the zero-initialized box, gate and LQE layers then predict non-trivial distributions). The inputs
are random encoder levels of a 640 x 640 image. With ``--full`` the whole model (HGNetv2, hybrid
encoder, transformer; no pretrained download) is built and run on random 640 x 640 images, its
BatchNorm statistics calibrated on them and then perturbed (as rtdetrv2_parity_reference.py).
The file holds, per size: ``config`` (the YAML's sections), ``state_dict`` (keys as in the
original's checkpoint: ``decoder.*``, with ``--full`` also ``backbone.*`` and ``encoder.*``),
``inputs`` (the encoder levels, or with ``--full`` the images), ``targets`` (cxcywh normalized;
image 1 has no box), ``eval`` (``layers``: per decoder layer i, the eval output with
``eval_idx`` = i: ``pred_logits``, ``pred_boxes`` and the layer's edge logits ``corners``),
``train`` (every output of a training-mode forward with denoising after
``torch.manual_seed(seed)``) and ``losses`` (every criterion term); with ``--float64``
everything runs in float64 after the float32 init (the attention's ``num_points_scale``,
1 / P_l, recomputed in float64: the original's stays rounded to float32, 3e-8 off for P_l = 3
or 6), without the losses (the original's criterion runs in float32 only). The second half,
dfine_parity_check.py, converts the weights and compares detr_plugin's outputs.
"""
import argparse
import importlib
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rtdetr_parity_reference import (calibrate_batchnorm, detach, fixed_targets,  # noqa: E402
                                     perturb)

# persistent float buffers that are fixed tables, not weights: left unperturbed
CONSTANT_BUFFERS = ('num_points_scale', 'anchors')


def import_original(root: str, deim: bool):
    """The original's transformer, criterion and matcher classes and YAMLConfig, without the
    packages' ``__init__`` (which import the data pipeline and the rest of the model zoo):
    ``src``/``engine``, the model package and ``misc`` / ``data`` are registered as empty
    packages (``data`` holding torch's ``DataLoader``, the one name ``misc.dist_utils`` imports
    from it). Nothing of the original is modified or copied."""
    sys.path.insert(0, root)
    top, zoo = ('engine', 'engine.deim') if deim else ('src', 'src.zoo.dfine')
    names = [top, zoo, f'{top}.misc', f'{top}.data'] + ([] if deim else ['src.zoo'])
    for name in names:
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(root, *name.split('.'))]
        sys.modules[name] = module
    sys.modules[f'{top}.data'].DataLoader = torch.utils.data.DataLoader
    YAMLConfig = importlib.import_module(f'{top}.core').YAMLConfig
    decoder = importlib.import_module(f'{zoo}.dfine_decoder')
    criterion = importlib.import_module(f'{zoo}.{"deim" if deim else "dfine"}_criterion')
    matcher = importlib.import_module(f'{zoo}.matcher')
    criterion_class = criterion.DEIMCriterion if deim else criterion.DFINECriterion
    return decoder.DFINETransformer, criterion_class, matcher.HungarianMatcher, YAMLConfig


def import_full_model(root: str, deim: bool):
    """The original's detector, HGNetv2 and hybrid encoder classes (after
    :func:`import_original`)."""
    top, zoo = ('engine', 'engine.deim') if deim else ('src', 'src.zoo.dfine')
    backbone = f'{top}.backbone' if deim else 'src.nn.backbone'
    for name in ([] if deim else ['src.nn']) + [backbone]:
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(root, *name.split('.'))]
        sys.modules[name] = module
    detector = importlib.import_module(f'{zoo}.{"deim" if deim else "dfine"}')
    return (detector.DEIM if deim else detector.DFINE,
            importlib.import_module(f'{backbone}.hgnetv2').HGNetv2,
            importlib.import_module(f'{zoo}.hybrid_encoder').HybridEncoder)


class CornerRecorder:
    """Forward hook on the decoder's ``Integral``: the edge logits of every layer it decodes,
    in call order (one call per layer run)."""

    def __init__(self, integral: torch.nn.Module):
        self.calls = []
        integral.register_forward_hook(lambda module, args, out: self.calls.append(
            args[0].detach().clone()))


def build(classes, yaml_cfg: dict, num_classes: int):
    """DFINETransformer and criterion of a YAML config, ``num_classes`` classes."""
    Transformer, Criterion, Matcher, _ = classes
    transformer = Transformer(num_classes=num_classes,
                              eval_spatial_size=yaml_cfg['eval_spatial_size'],
                              **yaml_cfg['DFINETransformer'])
    criterion_cfg = dict(yaml_cfg[yaml_cfg['criterion']])
    matcher_cfg = dict(criterion_cfg.pop('matcher'))
    matcher_cfg.pop('type')
    matcher = Matcher(use_focal_loss=yaml_cfg['use_focal_loss'], **matcher_cfg)
    criterion = Criterion(matcher, num_classes=num_classes, **criterion_cfg)
    return transformer, criterion


def run(classes, yaml_cfg: dict, seed: int, batch_size: int, full, float64: bool) -> dict:
    """Builds, perturbs and runs one model; ``full``: :func:`import_full_model`'s classes, or
    None for the transformer alone; ``float64``: cast to float64 after the float32 random init."""
    torch.manual_seed(seed)
    transformer, criterion = build(classes, yaml_cfg, num_classes=80)
    cfg = yaml_cfg['DFINETransformer']
    generator = torch.Generator().manual_seed(seed)
    height, width = yaml_cfg['eval_spatial_size']
    sections = dict(DFINETransformer=cfg, criterion=yaml_cfg[yaml_cfg['criterion']])
    if full is None:
        model = transformer
        inputs = [torch.randn(batch_size, c, height // s, width // s, generator=generator)
                  for c, s in zip(cfg['feat_channels'], cfg['feat_strides'])]
        perturb(model, generator, stats=False, constants=CONSTANT_BUFFERS)
        state_dict = {f'decoder.{k}': v.clone() for k, v in model.state_dict().items()}
    else:
        Detector, HGNetv2, HybridEncoder = full
        sections.update(HGNetv2=yaml_cfg['HGNetv2'], HybridEncoder=yaml_cfg['HybridEncoder'])
        backbone = HGNetv2(**dict(yaml_cfg['HGNetv2'], pretrained=False))
        encoder = HybridEncoder(**dict(yaml_cfg['HybridEncoder'],
                                       eval_spatial_size=yaml_cfg['eval_spatial_size']))
        model = Detector(backbone, encoder, transformer)
        inputs = torch.rand(batch_size, 3, height, width, generator=generator)
        perturb(model, generator, stats=False, constants=CONSTANT_BUFFERS)
        calibrate_batchnorm(model, inputs)
        perturb(model, generator, stats=True)
        state_dict = {k: v.clone() for k, v in model.state_dict().items()}
    targets = fixed_targets()[:batch_size]
    if float64:
        model.double()
        inputs = inputs.double() if full else [x.double() for x in inputs]
        for target in targets:
            target['boxes'] = target['boxes'].double()
        with torch.no_grad():  # 1 / P_l exactly: the original keeps it rounded to float32
            for layer in transformer.decoder.layers:
                scale = layer.cross_attn.num_points_scale
                scale.copy_(1 / torch.tensor([n for n in layer.cross_attn.num_points_list
                                              for _ in range(n)], dtype=torch.float64))
        state_dict = {k: v.double() if v.is_floating_point() else v
                      for k, v in state_dict.items()}
    corners = CornerRecorder(transformer.integral)

    model.eval()
    decoder = transformer.decoder
    eval_idx, layers = decoder.eval_idx, []
    with torch.no_grad():
        for i in range(decoder.num_layers):
            decoder.eval_idx = i
            out = model(inputs)
            layers.append(dict(pred_logits=out['pred_logits'], pred_boxes=out['pred_boxes'],
                               corners=corners.calls[-1]))
    decoder.eval_idx = eval_idx

    model.train()
    torch.manual_seed(seed)
    out = model(inputs, targets)
    train = detach(out)
    # the original's criterion runs in float32 only (its bin targets are float32 tensors)
    losses = {} if float64 else {k: float(v.detach())
                                 for k, v in criterion(out, targets).items()}
    return dict(config=sections, state_dict=state_dict, inputs=inputs, targets=targets,
                eval=dict(layers=detach(layers)), train=train, losses=losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', required=True, help='path of Peterande/D-FINE or, with '
                        '--deim, of ShihuaHuang95/DEIM')
    parser.add_argument('--deim', action='store_true', help='DEIM-D-FINE configs and criterion')
    parser.add_argument('--sizes', nargs='+', default=['n', 's', 'l'],
                        choices=['n', 's', 'm', 'l', 'x'])
    parser.add_argument('--full', action='store_true',
                        help='the whole model (HGNetv2, encoder, transformer) on images')
    parser.add_argument('--float64', action='store_true', help='cast the model, inputs and '
                        'targets to float64 after the float32 random init')
    parser.add_argument('--out', required=True)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--batch-size', type=int, default=2)
    args = parser.parse_args()

    classes = import_original(args.root, args.deim)
    YAMLConfig = classes[-1]
    full = import_full_model(args.root, args.deim) if args.full else None
    results = {}
    for size in args.sizes:
        folder, stem = ('deim_dfine', 'deim') if args.deim else ('dfine', 'dfine')
        path = os.path.join(args.root, 'configs', folder, f'{stem}_hgnetv2_{size}_coco.yml')
        results[size] = run(classes, YAMLConfig(path).yaml_cfg, args.seed, args.batch_size, full,
                            args.float64)
        result = results[size]
        print(f'{size}: {len(result["state_dict"])} tensors, {len(result["eval"]["layers"])} '
              f'layers, {len(result["losses"])} losses, dn groups '
              f'{result["train"]["dn_meta"]["dn_num_group"]}')
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save(dict(seed=args.seed, deim=args.deim, full=args.full, float64=args.float64,
                    sizes=results,
                    torch_version=torch.__version__), args.out)


if __name__ == '__main__':
    main()
