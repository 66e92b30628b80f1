"""Runs the ORIGINAL RT-DETRv2 (rtdetrv2_pytorch) on a fixed input and saves weights + outputs.

First half of the RT-DETRv2 parity check of docs/parity.md; run it in an environment with the
original's dependencies (torch, torchvision, scipy, pyyaml, tensorboard), never in detr_plugin's::

    python tools/model_converters/rtdetrv2_parity_reference.py \\
        --root /work/ref/rtdetrv2_pytorch --config rtdetrv2_r18vd_120e_coco.yml \\
        --out /work/ref/parity_v2/rtdetrv2_r18vd_120e_coco.pth

The model, criterion and postprocessor are built from the original's YAML config (no pretrained
download) after ``torch.manual_seed(seed)`` and given random weights by the RT-DETR v1
procedure (rtdetr_parity_reference.py: perturbed parameters, BatchNorm statistics calibrated on
the input, then perturbed). The file
written holds ``config``, ``seed``, ``state_dict`` (before any training-mode forward),
``inputs`` (bs, 3, 640, 640) in [0, 1], ``targets`` (cxcywh normalized; image 1 has no box),
``eval`` and ``train`` (see ``eval_outputs`` / ``train_outputs``), ``dtype`` ('torch.float32', or
'torch.float64' with --float64), and for ``cross_attn_method: discrete`` ``discrete_margin``:
``{'eval' | 'train': {'min_distance': cells, 'near': count}}`` over the decoder layers of the full
eval forward and of the training forward (see ``DiscreteMarginRecorder``). Next to it,
``<stem>_keys.txt`` lists the state dict: name, shape, dtype, one per line.
"""
import argparse
import importlib
import os
import sys
import types
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rtdetr_parity_reference import (calibrate_batchnorm, detach, fixed_targets,  # noqa: E402
                                     perturb)

# persistent float buffers that are fixed tables, not weights: left unperturbed
CONSTANT_BUFFERS = ('num_points_scale', 'anchors')


def import_original(root: str):
    """Imports the original's model code without its dataset package (which needs
    faster_coco_eval) or the optional backbones (timm, transformers): ``src``, ``src.nn``,
    ``src.nn.backbone``, ``src.data`` and ``src.misc`` are registered as empty packages, and
    ``src.data`` is given the one name the criterion's ``src.misc.dist_utils`` imports from it
    (its own ``DataLoader``). Nothing of the original is modified or copied."""
    sys.path.insert(0, root)
    for name in ('src', 'src.nn', 'src.nn.backbone', 'src.data', 'src.misc'):
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(root, *name.split('.'))]
        sys.modules[name] = module
    sys.modules['src.data'].DataLoader = importlib.import_module('src.data.dataloader').DataLoader
    importlib.import_module('src.nn.backbone.presnet')  # registers PResNet
    importlib.import_module('src.zoo.rtdetr')  # RTDETR, HybridEncoder, v2 decoder and criterion
    return importlib.import_module('src.core').YAMLConfig


class TopkRecorder:
    """Wraps one decoder's ``_select_topk`` (as an instance attribute, the class is untouched)
    and keeps what the last call selected: the encoder top-k logits (bs, Q, C) and boxes
    (bs, Q, 4, sigmoid of the selected unactivated coordinates). In eval mode the original
    returns neither."""

    def __init__(self, decoder: torch.nn.Module):
        self.select = decoder._select_topk
        decoder._select_topk = self
        self.last = None

    def __call__(self, memory, logits, coords_unact, topk):
        selected = self.select(memory, logits, coords_unact, topk)
        self.last = dict(logits=selected[1].detach().clone(),
                         boxes=selected[2].detach().sigmoid())
        return selected


class DiscreteMarginRecorder:
    """For ``cross_attn_method: discrete``: the original picks the cell
    ``int64(grid * size + 0.5)`` per sampling point, clamped to the map, so a point lying within
    float error of a cell border can pick another cell in another implementation. Wraps each
    decoder layer's attention core (an instance attribute) and records, per call, the smallest
    distance of ``grid * size + 0.5`` to an integer k with 1 <= k <= size - 1 (the borders
    that change the cell; beyond them the clamp decides), in cells: the margin an exact match
    needs; and how many points lie closer than ``NEAR`` cells to such a border.

    ``calls`` holds (margin, near) per layer call, in call order."""
    NEAR = 1e-4

    def __init__(self, layers: torch.nn.ModuleList):
        self.calls: List[Tuple[float, int]] = []
        for layer in layers:
            attn = layer.cross_attn
            attn.ms_deformable_attn_core = self.wrap(attn.ms_deformable_attn_core)

    def wrap(self, core):
        def recorded(value, shapes, locations, weights, num_points_list):
            # locations (bs, Q, heads, sum(points), 2) in [0, 1] image coordinates (x, y)
            per_level = locations.detach().split(num_points_list, dim=-2)
            distances = []
            for (h, w), loc in zip(shapes, per_level):
                size = torch.tensor([w, h], dtype=loc.dtype)
                cell = loc * size + 0.5
                border = cell.round()
                inside = (border >= 1) & (border <= size - 1)
                distances.append((cell - border).abs()[inside])
            distances = torch.cat(distances)
            self.calls.append((distances.min().item(), int((distances < self.NEAR).sum())))
            return core(value, shapes, locations, weights, num_points_list)
        return recorded


@torch.no_grad()
def eval_outputs(model, postprocessor, inputs: torch.Tensor, topk: TopkRecorder) -> dict:
    """``pred_logits`` (bs, Q, C) / ``pred_boxes`` (bs, Q, 4): the eval output (layer
    ``eval_idx``); ``layers``: one dict(pred_logits, pred_boxes) per decoder layer, layer i from
    an eval forward with the original's ``eval_idx`` set to i (the original stops there);
    ``enc_topk``: dict(logits, boxes) of the query selection; ``results``: the postprocessor's
    top-k (labels, boxes in pixels xyxy, scores) for 640 x 640."""
    model.eval()
    decoder = model.decoder.decoder
    eval_idx = decoder.eval_idx
    layers = []
    for i in range(decoder.num_layers):
        decoder.eval_idx = i
        out = model(inputs)
        layers.append(dict(pred_logits=out['pred_logits'], pred_boxes=out['pred_boxes']))
    decoder.eval_idx = eval_idx
    out = model(inputs)
    sizes = torch.tensor([list(inputs.shape[-2:])] * inputs.shape[0])
    return detach(dict(pred_logits=out['pred_logits'], pred_boxes=out['pred_boxes'],
                       layers=layers, enc_topk=topk.last, results=postprocessor(out, sizes)))


def train_outputs(model, criterion, inputs: torch.Tensor, targets: List[dict], seed: int) -> dict:
    """Every output of a training-mode forward with denoising after ``torch.manual_seed(seed)``:
    ``pred_logits`` / ``pred_boxes`` (last layer), ``aux_outputs`` (the other decoder layers),
    ``enc_aux_outputs`` (the encoder top-k), ``enc_meta``, ``dn_aux_outputs`` (every layer's
    denoising queries), ``dn_meta``; and ``losses``, every criterion term as a float."""
    model.train()
    torch.manual_seed(seed)
    out = model(inputs, targets)
    losses = {k: float(v.detach()) for k, v in criterion(out, targets).items()}
    return dict(detach(out), losses=losses)


def write_keys(state_dict: Dict[str, torch.Tensor], path: str) -> None:
    with open(path, 'w') as f:
        for name, tensor in state_dict.items():
            f.write(f'{name} {list(tensor.shape)} {str(tensor.dtype).replace("torch.", "")}\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', required=True, help='path of rtdetrv2_pytorch/')
    parser.add_argument('--config', default='rtdetrv2_r18vd_120e_coco.yml',
                        help='file name under configs/rtdetrv2/')
    parser.add_argument('--out', required=True)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--float64', action='store_true',
                        help='cast the model, input and targets to float64 after the float32 '
                        'random init and run everything in float64')
    args = parser.parse_args()

    YAMLConfig = import_original(args.root)
    cfg = YAMLConfig(os.path.join(args.root, 'configs', 'rtdetrv2', args.config))
    cfg.yaml_cfg['PResNet']['pretrained'] = False
    torch.manual_seed(args.seed)  # the initial weights, so that a rerun makes the same file
    model, criterion, postprocessor = cfg.model, cfg.criterion, cfg.postprocessor
    postprocessor.remap_mscoco_category = False  # contiguous labels 0..79, as mmdet's
    decoder = model.decoder
    topk = TopkRecorder(decoder)
    margins = (DiscreteMarginRecorder(decoder.decoder.layers)
               if decoder.cross_attn_method == 'discrete' else None)

    generator = torch.Generator().manual_seed(args.seed)
    inputs = torch.rand(args.batch_size, 3, 640, 640, generator=generator)
    perturb(model, generator, stats=False, constants=CONSTANT_BUFFERS)
    calibrate_batchnorm(model, inputs)
    perturb(model, generator, stats=True)
    targets = fixed_targets()[:args.batch_size]
    if args.float64:
        model.double()
        inputs = inputs.double()
        for target in targets:
            target['boxes'] = target['boxes'].double()
    state_dict = {k: v.clone() for k, v in model.state_dict().items()}

    evaluated = eval_outputs(model, postprocessor, inputs, topk)
    num_layers = len(evaluated['layers'])
    eval_calls = margins.calls[-num_layers:] if margins is not None else []  # full eval forward
    trained = train_outputs(model, criterion, inputs, targets, args.seed)
    extra = {}
    if margins is not None:
        train_calls = margins.calls[-num_layers:]
        extra['discrete_margin'] = {
            mode: dict(min_distance=min(m for m, _ in calls), near=sum(n for _, n in calls))
            for mode, calls in (('eval', eval_calls), ('train', train_calls))}

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save(dict(config=args.config, seed=args.seed, state_dict=state_dict, inputs=inputs,
                    targets=targets, eval=evaluated, train=trained, dtype=str(inputs.dtype),
                    torch_version=torch.__version__, **extra), args.out)
    keys = os.path.splitext(args.out)[0] + '_keys.txt'
    write_keys(state_dict, keys)
    last = evaluated['layers'][-1]
    same = (torch.equal(last['pred_logits'], evaluated['pred_logits'])
            and torch.equal(last['pred_boxes'], evaluated['pred_boxes']))
    print(f'{args.config}: {len(state_dict)} tensors ({keys}), {len(trained["losses"])} losses, '
          f'{len(evaluated["layers"])} eval layers (last == eval output: {same}), '
          f'dn groups {trained["dn_meta"]["dn_num_group"]}'
          + (f", discrete margin {extra['discrete_margin']}" if extra else '') + f' -> {args.out}')


if __name__ == '__main__':
    main()
