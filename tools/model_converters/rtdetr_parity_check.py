"""Compares detr_plugin's RT-DETR with the original's outputs saved by rtdetr_parity_reference.py.

Second half of the parity check of docs/parity.md, run in detr_plugin's environment::

    python tools/model_converters/rtdetr_parity_check.py r18.pth \
        configs/rtdetr/rtdetr_r18vd_8xb2-72e_coco.py [--tol 1e-4] [--json DIFFS.json]

Converts the saved original weights with rtdetr_to_plugin.py, loads them strictly, runs the same
input and prints the largest absolute difference of every compared output:

* inference (eval mode): the decoder's class logits and boxes, and the post-processed top-300
  scores, labels and boxes (the original's boxes clamped to the image, as ours are; both divided
  by the image size);
* training mode with denoising (same seed, so the same denoising noise): logits and boxes of every
  decoder layer, of the encoder top-k and of every layer's denoising queries;
* every loss term.

Selected queries and detections are compared as sets (see ``matched_max_diff``); the table says
whether they also came in the same order.

With --json the differences are also written as ``{"diffs": {name: diff}, "orders": {name:
order}}`` (read by run_parity_checks.py). Exits with status 1 if any difference exceeds --tol.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Tuple

import torch
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from mmengine.config import Config
from mmengine.structures import InstanceData
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from detr_plugin.converters import convert_rtdetr as convert_state_dict  # noqa: E402

from detr_plugin.registry import MODELS  # noqa: E402
from detr_plugin.utils import register_all_modules  # noqa: E402


def data_samples(inputs: torch.Tensor, targets: List[dict]) -> List[DetDataSample]:
    """The original's targets (cxcywh normalized) as mmdet samples (xyxy pixels)."""
    h, w = inputs.shape[-2:]
    samples = []
    for target in targets:
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             scale_factor=(1.0, 1.0), batch_input_shape=(h, w),
                                             pad_shape=(h, w)))
        boxes = bbox_cxcywh_to_xyxy(target['boxes'].reshape(-1, 4)) * torch.tensor([w, h, w, h])
        sample.gt_instances = InstanceData(bboxes=boxes, labels=target['labels'])
        samples.append(sample)
    return samples


def loss_name(original: str, num_layers: int) -> str:
    """'loss_vfl_aux_0' -> 'd0.loss_cls'; the last aux is the encoder's (v1; v2 names it
    '_enc_0'), '_dn_{i}' denoising."""
    base = {'loss_vfl': 'loss_cls', 'loss_bbox': 'loss_bbox', 'loss_giou': 'loss_iou'}
    for key, ours in base.items():
        if original == key:
            return ours
        if original.startswith(key + '_aux_'):
            i = int(original.rsplit('_', 1)[1])
            return f'enc_{ours}' if i == num_layers - 1 else f'd{i}.{ours}'
        if original.startswith(key + '_dn_'):
            i = int(original.rsplit('_', 1)[1])
            return f'dn_{ours}' if i == num_layers - 1 else f'd{i}.dn_{ours}'
        if original == key + '_enc_0':  # RT-DETRv2: the encoder's top-k apart from the layers
            return f'enc_{ours}'
    raise KeyError(original)


def matched_max_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Largest absolute difference after pairing the rows of two (n, d) tensors one to one so
    that the largest difference is small (Hungarian matching on the L-inf distance).

    Decoder queries form a set: where two encoder scores lie closer than float32 noise, the
    top-k returns the same queries in another order (and two detections with equal scores sort
    either way), so rows are compared as sets; any different query would still show.
    """
    cost = torch.cdist(ours.detach().double(), theirs.detach().double(), p=float('inf'))
    rows, cols = linear_sum_assignment(cost.numpy())
    return cost[rows, cols].max().item()


def compare(reference: dict, config: str) -> Dict[str, Tuple[float, str]]:
    """Largest absolute difference of every compared output, by name, and for the query sets
    whether the queries came in the same order ('same' / 'permuted'; '' for the others)."""
    cfg = Config.fromfile(config).model
    cfg.backbone.init_cfg = None
    cfg.bbox_head.num_classes = 80
    model = MODELS.build(cfg)
    model.load_state_dict(convert_state_dict(reference['state_dict']), strict=True)
    inputs, targets = reference['inputs'], reference['targets']
    if reference.get('dtype') == 'torch.float64':  # a float64 reference: both sides in float64
        model.double()
        inputs = inputs.double()
    samples = data_samples(inputs, targets)
    diffs, orders = {}, {}

    def record(name, ours, theirs):
        diffs[name] = (ours.double() - theirs.double()).abs().max().item() if ours.numel() else 0.

    def record_set(name, ours, theirs):
        """(bs, n, d) rows compared per image as sets; notes whether the order was the same."""
        diffs[name] = max(matched_max_diff(o, t) for o, t in zip(ours, theirs))
        same_order = all((o - t).abs().max() < 1e-3 for o, t in zip(ours, theirs))
        orders[name] = 'same' if same_order else 'permuted'

    model.eval()
    with torch.no_grad():
        out = model.forward_transformer(model.extract_feat(inputs))
        preds = model.bbox_head.predict(out, samples, rescale=False)
    ref = reference['eval']
    record_set('eval/queries (logits, boxes)', torch.cat([out.logits[-1], out.boxes[-1]], -1),
               torch.cat([ref['pred_logits'], ref['pred_boxes']], -1))
    h, w = inputs.shape[-2:]
    scale = torch.tensor([w, h, w, h])  # boxes compared normalized, as the tolerance is meant
    detections = [[], []]
    for pred, result in zip(preds, ref['results']):
        clamped = result['boxes'].clone()
        clamped[:, 0::2] = clamped[:, 0::2].clamp(0, w)
        clamped[:, 1::2] = clamped[:, 1::2].clamp(0, h)
        # a label difference weighs 1e3: a mislabelled detection cannot pass
        for rows, (scores, labels, boxes) in zip(detections, (
                (pred.scores, pred.labels, pred.bboxes), (result['scores'], result['labels'],
                                                          clamped))):
            rows.append(torch.cat([scores[:, None], 1e3 * labels[:, None], boxes / scale], -1))
    record_set('eval/top300 (score, label, box)', torch.stack(detections[0]),
               torch.stack(detections[1]))
    if 'layers' in ref:  # RT-DETRv2's reference: every layer's eval output and the top-k
        record_set('eval/enc top-k (logits, boxes)', torch.cat([out.enc_logits, out.enc_boxes], -1),
                   torch.cat([ref['enc_topk']['logits'], ref['enc_topk']['boxes']], -1))
        eval_idx = model.bbox_head.eval_idx
        for i, layer in enumerate(ref['layers']):  # layer i is the output with eval_idx = i
            model.bbox_head.eval_idx = i
            with torch.no_grad():
                out = model.forward_transformer(model.extract_feat(inputs))
            record_set(f'eval/layer{i} (logits, boxes)',
                       torch.cat([out.logits[-1], out.boxes[-1]], -1),
                       torch.cat([layer['pred_logits'], layer['pred_boxes']], -1))
        model.bbox_head.eval_idx = eval_idx

    model.train()
    torch.manual_seed(reference['seed'])
    gt = model.bbox_head.ground_truth(samples, inputs)
    out = model.forward_transformer(model.extract_feat(inputs), gt)
    ref = reference['train']
    num_layers = out.logits.shape[0]
    layers = ref['aux_outputs'][:num_layers - 1] + [ref]
    for i, layer in enumerate(layers):
        record_set(f'train/layer{i} (logits, boxes)', torch.cat([out.logits[i], out.boxes[i]], -1),
                   torch.cat([layer['pred_logits'], layer['pred_boxes']], -1))
    # v1 appends the encoder's top-k to the decoder layers' outputs; v2 keeps it apart
    enc = ref['enc_aux_outputs'][0] if 'enc_aux_outputs' in ref else ref['aux_outputs'][-1]
    record_set('train/enc top-k (logits, boxes)', torch.cat([out.enc_logits, out.enc_boxes], -1),
               torch.cat([enc['pred_logits'], enc['pred_boxes']], -1))
    if out.denoising.groups.num_groups != ref['dn_meta']['dn_num_group']:
        raise AssertionError(f"{out.denoising.groups.num_groups} denoising groups, the original "
                             f"{ref['dn_meta']['dn_num_group']}")
    for i, layer in enumerate(ref['dn_aux_outputs']):
        record(f'train/dn layer{i} logits', out.denoising.logits[i], layer['pred_logits'])
        record(f'train/dn layer{i} boxes', out.denoising.boxes[i], layer['pred_boxes'])
    losses = model.bbox_head.loss(out, gt)
    for name, value in ref['losses'].items():
        ours = loss_name(name, num_layers)
        record(f'loss/{ours}', losses[ours].detach(), torch.tensor(value))
    if len(losses) != len(ref['losses']):
        raise AssertionError(f'{len(losses)} loss terms, the original {len(ref["losses"])}')
    return {name: (diff, orders.get(name, '')) for name, diff in diffs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('reference', help='file written by rtdetr_parity_reference.py')
    parser.add_argument('config', help='detr_plugin config of the same model')
    parser.add_argument('--tol', type=float, default=1e-4)
    parser.add_argument('--json', help='also write the differences to this file')
    args = parser.parse_args()
    register_all_modules()
    reference = torch.load(args.reference, map_location='cpu', weights_only=False)
    diffs = compare(reference, args.config)
    print(f"| {reference['config']} vs {os.path.basename(args.config)} | max abs diff | "
          'query order |')
    print('|---|---|---|')
    for name, (diff, order) in diffs.items():
        print(f'| {name} | {diff:.2e}{"  FAIL" if diff > args.tol else ""} | {order} |')
    worst = max(diff for diff, _ in diffs.values())
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(diffs={k: d for k, (d, _) in diffs.items()},
                           orders={k: o for k, (_, o) in diffs.items() if o}), f, indent=1)
    verdict = 'PASS' if worst <= args.tol else 'FAIL'
    print(f'worst: {worst:.2e} (tolerance {args.tol:g}) -> {verdict}')
    sys.exit(0 if worst <= args.tol else 1)


if __name__ == '__main__':
    main()
