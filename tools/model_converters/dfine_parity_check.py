"""Compares detr_plugin's D-FINE decoder and head with the original's outputs saved by
dfine_parity_reference.py.

Second half of the D-FINE decoder/head parity check, run in detr_plugin's environment::

    python tools/model_converters/dfine_parity_check.py dfine_transformer.pth [--tol 1e-4]
    python tools/model_converters/dfine_parity_check.py dfine_l.pth \
        --config configs/_base_/models/dfine_hgnetv2.py

For every size in the file, builds our ``DFINEDecoder`` + ``DFINEHead`` + denoising from the
saved original config (inside an ``RTDETR`` detector whose backbone and neck are not used: the
saved encoder levels are the input; for a ``--full`` reference the whole model with ``HGNetv2``
and ``DFineHybridEncoder`` on the saved images), loads the converted weights strictly, and prints
the largest absolute difference of:

* eval mode, per decoder layer i (``eval_idx`` = i, as the original was run): class logits,
  boxes and edge logits (the distributions) of the queries;
* training mode with denoising (same seed, so the same noise): every layer's logits, boxes and
  edge logits, the pre-box, the initial reference, the encoder top-k, and every layer's
  denoising queries (and their pre-box);
* every loss term, under our names (``loss_name``); D-FINE's DDF of the last denoising layer
  with itself (0 by construction, a term DEIM drops) has no counterpart.

Queries are compared as sets (``matched_max_diff`` of rtdetr_parity_check.py). Exits with
status 1 if any difference exceeds --tol.
"""
import argparse
import os
import re
import sys
from typing import Dict, Optional

import torch
from mmengine.config import Config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rtdetr_parity_check import data_samples, matched_max_diff  # noqa: E402

from detr_plugin.converters.dfine import convert_dfine, convert_dfine_decoder  # noqa: E402
from detr_plugin.registry import MODELS  # noqa: E402
from detr_plugin.utils import register_all_modules  # noqa: E402

# a backbone and neck the detector needs to be built; the check feeds encoder levels directly
UNUSED_BACKBONE = dict(type='ResNetVd', depth=18, num_stages=4, out_indices=(1, 2, 3),
                       frozen_stages=-1, norm_cfg=dict(type='BN'), style='pytorch')


# the original's argument defaults that the YAML configs may leave out
HGNETV2_DEFAULTS = dict(use_lab=False, return_idx=[1, 2, 3], freeze_stem_only=True, freeze_at=0,
                        freeze_norm=True)
ENCODER_DEFAULTS = dict(in_channels=[512, 1024, 2048], hidden_dim=256, nhead=8,
                        dim_feedforward=1024, dropout=0.0, enc_act='gelu', use_encoder_idx=[2],
                        num_encoder_layers=1, pe_temperature=10000, expansion=1.0, depth_mult=1.0,
                        act='silu')
ORIGINAL_DEFAULTS = dict(hidden_dim=256, num_queries=300, num_levels=3, num_points=4, nhead=8,
                         num_layers=6, dim_feedforward=1024, num_denoising=100,
                         label_noise_ratio=0.5, box_noise_scale=1.0, eval_idx=-1,
                         cross_attn_method='default', query_select_method='default', reg_max=32,
                         reg_scale=4.0, activation='relu', mlp_act='relu')


def backbone_and_neck(sections: dict) -> dict:
    """Our HGNetv2 and DFineHybridEncoder configs of the original's YAML sections."""
    hgnet = dict(HGNETV2_DEFAULTS, **sections['HGNetv2'])
    frozen = hgnet['freeze_at']
    if frozen >= 0:
        frozen = 0 if hgnet['freeze_stem_only'] else frozen + 1
    enc = dict(ENCODER_DEFAULTS, **sections['HybridEncoder'])
    return dict(
        backbone=dict(type='HGNetv2', arch=hgnet['name'], out_indices=hgnet['return_idx'],
                      use_lab=hgnet['use_lab'], frozen_stages=frozen,
                      norm_cfg=dict(type='FrozenBatchNorm2d' if hgnet['freeze_norm'] else 'BN')),
        neck=dict(type='DFineHybridEncoder', in_channels=enc['in_channels'],
                  embed_dims=enc['hidden_dim'], num_heads=enc['nhead'],
                  ffn_dims=enc['dim_feedforward'], dropout=enc['dropout'],
                  enc_act=enc['enc_act'], encoder_levels=enc['use_encoder_idx'],
                  num_encoder_layers=enc['num_encoder_layers'],
                  pe_temperature=enc['pe_temperature'], expansion=enc['expansion'],
                  depth_mult=enc['depth_mult'], act=enc['act']))


def model_config(sections: dict) -> dict:
    """Our detector config of the original's YAML sections: ``DFINETransformer`` and the
    criterion (D-FINE's or DEIM's: MAL, SiLU activations), with ``HGNetv2`` and
    ``HybridEncoder`` for a whole model (else an unused backbone and neck)."""
    cfg = dict(ORIGINAL_DEFAULTS, **sections['DFINETransformer'])
    criterion = sections['criterion']
    dims = cfg['hidden_dim']
    weights = criterion['weight_dict']
    act, mlp_act = cfg['activation'], cfg['mlp_act']
    if 'mal' in criterion['losses']:
        cls_name, loss_cls = 'loss_mal', dict(type='MatchabilityAwareLoss',
                                              gamma=criterion['gamma'],
                                              alpha=criterion.get('mal_alpha'),
                                              loss_weight=weights['loss_mal'])
    else:
        cls_name, loss_cls = 'loss_vfl', dict(type='RTDETRVarifocalLoss', alpha=criterion['alpha'],
                                              gamma=criterion['gamma'],
                                              loss_weight=weights['loss_vfl'])
    backbone_neck = (backbone_and_neck(sections) if 'HGNetv2' in sections else dict(
        backbone=UNUSED_BACKBONE,
        neck=dict(type='HybridEncoder', in_channels=[128, 256, 512], embed_dims=dims)))
    return dict(
        type='RTDETR',
        **backbone_neck,
        decoder=dict(type='DFINEDecoder', in_channels=cfg['feat_channels'], embed_dims=dims,
                     num_queries=cfg['num_queries'], num_layers=cfg['num_layers'],
                     mlp_act=mlp_act,
                     layer_cfg=dict(num_heads=cfg['nhead'], num_levels=cfg['num_levels'],
                                    num_points=cfg['num_points'],
                                    ffn_dims=cfg['dim_feedforward'], dropout=0.0, act=act,
                                    cross_attn_method=cfg['cross_attn_method'])),
        denoising=dict(num_denoising=cfg['num_denoising'],
                       label_noise_ratio=cfg['label_noise_ratio'],
                       box_noise_scale=cfg['box_noise_scale'], absolute_sizes=True),
        bbox_head=dict(type='DFINEHead', num_classes=80, embed_dims=dims,
                       eval_idx=cfg['eval_idx'], reg_max=cfg['reg_max'],
                       reg_scale=float(cfg['reg_scale']),
                       query_select_method=cfg['query_select_method'], mlp_act=mlp_act,
                       lqe_act=act, loss_cls=loss_cls, loss_cls_name=cls_name,
                       loss_fgl=dict(type='FineGrainedLocalizationLoss',
                                     loss_weight=weights['loss_fgl']),
                       loss_ddf=dict(type='DecoupledDistillationLoss',
                                     loss_weight=weights['loss_ddf']),
                       loss_bbox=dict(type='L1Loss', loss_weight=weights['loss_bbox']),
                       loss_iou=dict(type='GIoULoss', loss_weight=weights['loss_giou'])),
        test_cfg=dict(max_per_img=300))


def loss_name(original: str, num_layers: int) -> str:
    """The original criterion's names -> ours: 'loss_fgl_aux_0' -> 'd0.loss_fgl', '_pre' ->
    'pre_', '_enc_0' -> 'enc_', '_dn_{i}' -> 'dn_' (layer i), '_dn_pre' -> 'pre_dn_'."""
    match = re.fullmatch(r'(loss_[a-z]+)(?:_(aux|dn|enc)_(\d+)|_(pre|dn_pre))?', original)
    if match is None:
        raise KeyError(original)
    base, kind, index, pre = match.groups()
    if pre:
        return f'pre_{"dn_" if pre == "dn_pre" else ""}{base}'
    if kind == 'enc':
        return f'enc_{base}'
    if kind is None:
        return base
    prefix = 'dn_' if kind == 'dn' else ''
    return f'{prefix}{base}' if int(index) == num_layers - 1 else f'd{index}.{prefix}{base}'


def compare(reference: dict, config: Optional[str] = None) -> Dict[str, float]:
    """Largest absolute difference of every compared output, by name; ``config``: our config
    file of the model (else translated from the saved YAML sections)."""
    sections = reference['config']
    full = 'HGNetv2' in sections
    model = MODELS.build(model_config(sections) if config is None
                         else dict(Config.fromfile(config).model, _scope_='detr_plugin'))
    if full:
        model.load_state_dict(convert_dfine(reference['state_dict']), strict=True)
    else:
        missing, unexpected = model.load_state_dict(
            convert_dfine_decoder(reference['state_dict']), strict=False)
        missing = [k for k in missing if not k.startswith(('backbone.', 'neck.'))]
        if missing or unexpected:
            raise KeyError(f'missing {missing[:5]}, unexpected {unexpected[:5]}')
    inputs, targets = reference['inputs'], reference['targets']
    if reference['float64']:
        model.double()
    if full:
        samples = data_samples(inputs, targets)
    else:
        stride = sections['DFINETransformer']['feat_strides'][0]
        size = (inputs[0].shape[-2] * stride, inputs[0].shape[-1] * stride)
        samples = data_samples(torch.zeros(1, 3, *size), targets)

    def features():
        return model.extract_feat(inputs) if full else inputs

    diffs = {}

    def record(name, ours, theirs):
        diffs[name] = (ours.double() - theirs.double()).abs().max().item() if ours.numel() else 0.

    def record_set(name, ours, theirs):
        diffs[name] = max(matched_max_diff(o, t) for o, t in zip(ours, theirs))

    model.eval()
    for i, layer in enumerate(reference['eval']['layers']):
        model.bbox_head.eval_idx = i
        with torch.no_grad():
            out = model.forward_transformer(features())
        record_set(f'eval/layer{i} (logits, boxes, corners)',
                   torch.cat([out.logits[-1], out.boxes[-1], out.extras[-1]], -1),
                   torch.cat([layer['pred_logits'], layer['pred_boxes'], layer['corners']], -1))
    model.bbox_head.eval_idx = len(reference['eval']['layers']) - 1

    model.train()
    torch.manual_seed(reference['seed'])
    gt = model.bbox_head.ground_truth(samples, inputs if full else inputs[0])
    out = model.forward_transformer(features(), gt)
    ref = reference['train']
    layers = ref['aux_outputs'] + [ref]
    for i, layer in enumerate(layers):
        record_set(f'train/layer{i} (logits, boxes, corners)',
                   torch.cat([out.logits[i], out.boxes[i], out.extras[i]], -1),
                   torch.cat([layer['pred_logits'], layer['pred_boxes'], layer['pred_corners']],
                             -1))
    pre = ref['pre_outputs']
    record_set('train/pre (logits, boxes, initial reference)',
               torch.cat([out.pre.logits[0], out.pre.boxes[0], out.pre.boxes[0]], -1),
               torch.cat([pre['pred_logits'], pre['pred_boxes'], ref['ref_points']], -1))
    enc = ref['enc_aux_outputs'][0]
    record_set('train/enc top-k (logits, boxes)', torch.cat([out.enc_logits, out.enc_boxes], -1),
               torch.cat([enc['pred_logits'], enc['pred_boxes']], -1))
    dn, dn_ref = out.denoising, ref['dn_outputs']
    if dn.groups.num_groups != ref['dn_meta']['dn_num_group']:
        raise AssertionError(f"{dn.groups.num_groups} denoising groups, the original "
                             f"{ref['dn_meta']['dn_num_group']}")
    for i, layer in enumerate(dn_ref):
        record(f'train/dn layer{i} logits', dn.logits[i], layer['pred_logits'])
        record(f'train/dn layer{i} boxes', dn.boxes[i], layer['pred_boxes'])
        record(f'train/dn layer{i} corners', dn.extras[i], layer['pred_corners'])
    record('train/dn pre logits', out.pre.denoising.logits[0], ref['dn_pre_outputs']['pred_logits'])
    record('train/dn pre boxes', out.pre.denoising.boxes[0], ref['dn_pre_outputs']['pred_boxes'])
    if not reference['losses']:  # a float64 reference: the original's criterion cannot run
        return diffs
    losses = model.bbox_head.loss(out, gt)
    compared = set()
    for name, value in reference['losses'].items():
        ours = loss_name(name, len(layers))
        if ours == 'dn_loss_ddf' and ours not in losses and value == 0:
            continue  # D-FINE's DDF of the teacher layer with itself: 0 by construction
        record(f'loss/{ours}', losses[ours].detach(), torch.tensor(value))
        compared.add(ours)
    if compared != set(losses):
        raise AssertionError(f'loss terms the original does not have: '
                             f'{sorted(set(losses) - compared)}')
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('reference', help='file written by dfine_parity_reference.py')
    parser.add_argument('--config', help='our config of the (one) model in the file, instead '
                        'of one translated from the original YAML')
    parser.add_argument('--tol', type=float, default=1e-4)
    args = parser.parse_args()
    register_all_modules()
    saved = torch.load(args.reference, map_location='cpu', weights_only=False)
    worst = 0.0
    for size, reference in saved['sizes'].items():
        diffs = compare(dict(reference, seed=saved['seed'], float64=saved.get('float64', False)),
                        args.config)
        part = ('whole model' if saved.get('full') else 'transformer') + (
            ', float64' if saved.get('float64') else '')
        print(f"| {'DEIM-' if saved['deim'] else ''}D-FINE {size.upper()} ({part}) | max abs "
              'diff |')
        print('|---|---|')
        for name, diff in diffs.items():
            print(f'| {name} | {diff:.2e}{"  FAIL" if diff > args.tol else ""} |')
        worst = max([worst, *diffs.values()])
    verdict = 'PASS' if worst <= args.tol else 'FAIL'
    print(f'worst: {worst:.2e} (tolerance {args.tol:g}) -> {verdict}')
    sys.exit(0 if worst <= args.tol else 1)


if __name__ == '__main__':
    main()
