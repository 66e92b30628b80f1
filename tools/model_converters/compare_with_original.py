"""Checks a converted checkpoint against the outputs its original model gave (docs/parity.md).

    python tools/model_converters/compare_with_original.py CONFIG CONVERTED.pth REFERENCE.pth \\
        [--cfg-options model.bbox_head.num_classes=91] [--atol 1e-4] [--json DIFFS.json]

REFERENCE.pth holds what the original model (eval mode) produced on a batch, saved by the
procedure of docs/parity.md: ``images`` (list of (3, h_i, w_i) normalized float images; the batch
pads them with zeros at the bottom and right, as the originals' NestedTensor and mmdet's data
preprocessor do), ``pred_logits`` (bs, Q, K) and ``pred_boxes`` (bs, Q, 4) of the last decoder
layer, optionally ``aux_logits`` / ``aux_boxes`` (L - 1, bs, Q, .) of the earlier layers, and for
two-stage Deformable DETR ``enc_logits`` (bs, N, K) / ``enc_boxes`` (bs, N, 4). The converted
checkpoint is loaded strictly into the model of CONFIG (built with random weights first), the same
batch goes through it, and the max absolute difference of every output is printed (and, with
--json, written as ``{"diffs": {name: diff}}`` for run_parity_checks.py). Exits 1 when one
exceeds --atol.

Two-stage queries are the top-k encoder proposals in score order; where two scores differ by less
than float error the two implementations may order them differently, which only permutes decoder
rows. When both select the same proposals, our decoder rows are put in the original's order before
comparing, and the number of rows that moved is printed.
"""
import argparse
import json
import sys

import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('checkpoint', help='converted checkpoint (tools/model_converters/*_to_plugin.py)')
    p.add_argument('reference', help="the original model's inputs and outputs")
    p.add_argument('--atol', type=float, default=1e-4)
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    p.add_argument('--json', help='also write the differences to this file')
    return p.parse_args()


def padded_batch(images):
    """(bs, 3, H, W) zero-padded images and their data samples (image and batch sizes)."""
    h = max(img.shape[1] for img in images)
    w = max(img.shape[2] for img in images)
    batch = images[0].new_zeros(len(images), 3, h, w)
    samples = []
    for i, img in enumerate(images):
        batch[i, :, :img.shape[1], :img.shape[2]] = img
        shape = tuple(img.shape[1:])
        samples.append(DetDataSample(metainfo=dict(
            img_shape=shape, ori_shape=shape, scale_factor=(1., 1.), pad_shape=(h, w),
            batch_input_shape=(h, w))))
    return batch, samples


def run_model(model, batch, samples) -> dict:
    """Our outputs under the reference file's names."""
    feats = model.extract_feat(batch)
    outputs = model.forward_transformer(feats, samples)
    if isinstance(outputs, torch.Tensor):  # DETR: hidden states
        (logits, boxes), enc = model.bbox_head(outputs), None
    else:  # Deformable DETR: every layer's predictions, the encoder proposals' (two-stage)
        logits, boxes, enc = outputs.logits, outputs.boxes, outputs.enc_logits
    ours = dict(pred_logits=logits[-1], pred_boxes=boxes[-1], aux_logits=logits[:-1],
                aux_boxes=boxes[:-1])
    if enc is not None:
        ours.update(enc_logits=outputs.enc_logits, enc_boxes=outputs.enc_boxes)
    return ours


def align_two_stage_queries(ours: dict, reference: dict, num_queries: int) -> None:
    """Reorders our decoder outputs (in place) to the original's top-k proposal order."""
    our_top = ours['enc_logits'][..., 0].topk(num_queries, dim=1).indices  # (bs, Q)
    ref_top = reference['enc_logits'][..., 0].topk(num_queries, dim=1).indices
    if any(set(a.tolist()) != set(b.tolist()) for a, b in zip(our_top, ref_top)):
        print('two-stage: the selected proposals differ; comparing rows unaligned')
        return
    # order[b, j]: our row holding the original's j-th proposal
    order = (our_top[:, None, :] == ref_top[:, :, None]).float().argmax(-1)
    moved = int((order != torch.arange(num_queries)).sum())
    print(f'two-stage: same proposals selected; {moved} rows reordered to the original\'s order')
    for name in ('pred_logits', 'pred_boxes'):
        ours[name] = ours[name].gather(1, order[..., None].expand_as(ours[name]))
    for name in ('aux_logits', 'aux_boxes'):
        index = order[None, ..., None].expand_as(ours[name])
        ours[name] = ours[name].gather(2, index)


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'detr_plugin'))
    cfg.model.backbone.init_cfg = None
    from mmengine.registry import MODELS
    model = MODELS.build(cfg.model)
    state_dict = torch.load(args.checkpoint, map_location='cpu', weights_only=False)['state_dict']
    model.load_state_dict(state_dict, strict=True)
    model.eval()

    reference = torch.load(args.reference, map_location='cpu', weights_only=False)
    batch, samples = padded_batch(reference['images'])
    with torch.no_grad():
        ours = run_model(model, batch, samples)
    if 'enc_logits' in reference:
        align_two_stage_queries(ours, reference, cfg.model.num_queries)
    diffs = {}
    for name, expected in reference.items():
        if name == 'images':
            continue
        if ours[name].shape != expected.shape:
            print(f'{name}: shape {tuple(ours[name].shape)} vs original {tuple(expected.shape)}')
            diffs[name] = float('inf')
            continue
        diffs[name] = (ours[name] - expected).abs().max().item()
        print(f'{name:12s} {str(tuple(expected.shape)):18s} max abs diff {diffs[name]:.3g}')
    worst = max(diffs.values())
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(diffs=diffs), f, indent=1)
    print(f'worst {worst:.3g} (atol {args.atol:g}): {"PASS" if worst <= args.atol else "FAIL"}')
    sys.exit(0 if worst <= args.atol else 1)


if __name__ == '__main__':
    main()
