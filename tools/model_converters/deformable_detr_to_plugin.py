"""Converts a fundamentalvision/Deformable-DETR checkpoint to a detr_plugin one.

    python tools/model_converters/deformable_detr_to_plugin.py SRC.pth DST.pth [--coco80]

Works for the plain, ``--with_box_refine`` and ``--with_box_refine --two_stage`` models; DST is an
mmengine checkpoint ``{'state_dict': ..., 'meta': ...}`` for the matching config in
configs/deformable_detr/ (load it with ``load_from`` or tools/test.py). The original COCO heads have
91 sigmoid outputs indexed by COCO category id; ``--coco80`` keeps the 80 used ones for mmdet's
``num_classes=80``, otherwise set ``model.bbox_head.num_classes=91``.

Key map (original -> ours):
    backbone.0.body.*                                backbone.*  (+ num_batches_tracked)
    input_proj.i.{0,1} (1x1 conv, GroupNorm)         neck.convs.i.{conv,gn}
    input_proj.i.{0,1} (3x3 stride-2 conv on C5)     neck.extra_convs.j.{conv,gn}
    transformer.level_embed                          level_embed
    transformer.encoder.layers.i.linear{1,2}         encoder.layers.i.ffn.linear{1,2}
    transformer.decoder.layers.i.norm1 (cross-attn)  decoder.layers.i.norm2
    transformer.decoder.layers.i.norm2 (self-attn)   decoder.layers.i.norm1
    transformer.decoder.layers.i.linear{1,2}         decoder.layers.i.ffn.linear{1,2}
    transformer.reference_points                     reference_points
    transformer.enc_output(_norm)                    proposals.memory_proj / memory_norm
    transformer.pos_trans(_norm)                     proposals.query_proj / query_norm
    query_embed                                      query_embedding
    class_embed.i / bbox_embed.i                     bbox_head.cls_branches.i / reg_branches.i
    transformer.decoder.{class,bbox}_embed.*         dropped (aliases of the heads above)
"""
import argparse
import os.path as osp
import sys
from collections import OrderedDict
from typing import Dict

from torch import Tensor

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from original_checkpoint import (BACKBONE_RULES, COCO80_IDS, add_batchnorm_counters,  # noqa: E402
                                 load_original, rename, save, select_rows)

_DEC = r'^transformer\.decoder\.layers\.(\d+)\.'
RULES = BACKBONE_RULES + (
    (r'^transformer\.level_embed$', 'level_embed'),
    (r'^transformer\.encoder\.layers\.(\d+)\.(linear[12])\.', r'encoder.layers.\1.ffn.\2.'),
    (r'^transformer\.encoder\.layers\.(\d+)\.(self_attn|norm[12])\.', r'encoder.layers.\1.\2.'),
    (_DEC + r'norm1\.', r'decoder.layers.\1.norm2.'),  # after cross-attention
    (_DEC + r'norm2\.', r'decoder.layers.\1.norm1.'),  # after self-attention
    (_DEC + r'(linear[12])\.', r'decoder.layers.\1.ffn.\2.'),
    (_DEC + r'(self_attn|cross_attn|norm3)\.', r'decoder.layers.\1.\2.'),
    (r'^transformer\.decoder\.(class|bbox)_embed\.', None),
    (r'^transformer\.reference_points\.', 'reference_points.'),
    (r'^transformer\.enc_output\.', 'proposals.memory_proj.'),
    (r'^transformer\.enc_output_norm\.', 'proposals.memory_norm.'),
    (r'^transformer\.pos_trans\.', 'proposals.query_proj.'),
    (r'^transformer\.pos_trans_norm\.', 'proposals.query_norm.'),
    (r'^query_embed\.', 'query_embedding.'),
    (r'^class_embed\.(\d+)\.', r'bbox_head.cls_branches.\1.'),
    (r'^bbox_embed\.(\d+)\.layers\.', r'bbox_head.reg_branches.\1.layers.'),
)


def input_proj_rules(state_dict: Dict[str, Tensor]) -> tuple:
    """Rules for ``input_proj.i``: 1x1 convs project backbone levels (ChannelMapper's ``convs``),
    the following 3x3 stride-2 convs make the extra levels (its ``extra_convs``)."""
    kernels = {}
    for key, value in state_dict.items():
        parts = key.split('.')
        if key.startswith('input_proj.') and parts[2:] == ['0', 'weight']:
            kernels[int(parts[1])] = value.shape[-1]
    num_backbone_levels = sum(1 for k in kernels.values() if k == 1)
    rules = []
    for i in sorted(kernels):
        target = (f'neck.convs.{i}' if i < num_backbone_levels
                  else f'neck.extra_convs.{i - num_backbone_levels}')
        rules += [(rf'^input_proj\.{i}\.0\.', f'{target}.conv.'),
                  (rf'^input_proj\.{i}\.1\.', f'{target}.gn.')]
    return tuple(rules)


def convert(state_dict: Dict[str, Tensor], coco80: bool = False) -> 'OrderedDict[str, Tensor]':
    converted = rename(state_dict, input_proj_rules(state_dict) + RULES)
    add_batchnorm_counters(converted)
    if coco80:
        heads = sorted({k.rsplit('.', 1)[0] for k in converted
                        if k.startswith('bbox_head.cls_branches.')})
        select_rows(converted, heads, COCO80_IDS)
    return converted


def describe(state_dict: Dict[str, Tensor]) -> str:
    two_stage = 'transformer.enc_output.weight' in state_dict
    refine = any(k.startswith('transformer.decoder.bbox_embed.') for k in state_dict)
    return {(False, False): 'plain', (True, False): 'with_box_refine',
            (True, True): 'with_box_refine + two-stage',
            (False, True): 'two-stage'}[(refine, two_stage)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='original checkpoint')
    parser.add_argument('dst', help='output mmengine checkpoint')
    parser.add_argument('--coco80', action='store_true',
                        help='keep the 80 COCO classes of the 91 class outputs')
    args = parser.parse_args()
    original = load_original(args.src)
    converted = convert(original, args.coco80)
    variant = describe(original)
    save(converted, args.dst, args.src, dict(variant=variant))
    num_classes = converted['bbox_head.cls_branches.0.bias'].numel()
    print(f'{variant} Deformable DETR, {num_classes} classes: {len(converted)} tensors -> {args.dst}')


if __name__ == '__main__':
    main()
