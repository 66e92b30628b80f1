"""fundamentalvision/Deformable-DETR (plain, ``--with_box_refine``, ``--two_stage``) -> detr_plugin
``DeformableDETR``.

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
from collections import OrderedDict
from typing import Dict

from torch import Tensor

from .rules import (COCO80_IDS, TORCHVISION_BACKBONE_RULES, add_batchnorm_counters, rename,
                    select_rows)

# the variant names of the original's flags, and the config of each
VARIANT_CONFIGS = {
    'plain': 'configs/deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
    'refine': 'configs/deformable_detr/deformable-detr-refine_r50_16xb2-50e_coco.py',
    'refine-twostage':
        'configs/deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
}

_DEC = r'^transformer\.decoder\.layers\.(\d+)\.'
RULES = TORCHVISION_BACKBONE_RULES + (
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


def is_deformable_detr(state_dict: Dict[str, Tensor]) -> bool:
    return 'transformer.level_embed' in state_dict


def deformable_detr_variant(state_dict: Dict[str, Tensor]) -> str:
    """'plain', 'refine', 'refine-twostage' (the released two-stage model) or 'two-stage', from
    the keys: box refinement gives the decoder aliases of the box heads, two-stage the proposal
    layers."""
    refine = any(k.startswith('transformer.decoder.bbox_embed.') for k in state_dict)
    two_stage = 'transformer.enc_output.weight' in state_dict
    return {(False, False): 'plain', (True, False): 'refine', (True, True): 'refine-twostage',
            (False, True): 'two-stage'}[(refine, two_stage)]


def _num_decoder_layers(state_dict: Dict[str, Tensor]) -> int:
    return len({k.split('.')[3] for k in state_dict if k.startswith('transformer.decoder.layers.')})


def _input_proj_rules(state_dict: Dict[str, Tensor]) -> tuple:
    """Rules for ``input_proj.i``: 1x1 convs project backbone levels (ChannelMapper's ``convs``),
    the following 3x3 stride-2 convs make the extra levels (its ``extra_convs``)."""
    kernels = {int(k.split('.')[1]): v.shape[-1] for k, v in state_dict.items()
               if k.startswith('input_proj.') and k.split('.')[2:] == ['0', 'weight']}
    num_backbone_levels = sum(1 for k in kernels.values() if k == 1)
    rules = []
    for i in sorted(kernels):
        target = (f'neck.convs.{i}' if i < num_backbone_levels
                  else f'neck.extra_convs.{i - num_backbone_levels}')
        rules += [(rf'^input_proj\.{i}\.0\.', f'{target}.conv.'),
                  (rf'^input_proj\.{i}\.1\.', f'{target}.gn.')]
    return tuple(rules)


def convert_deformable_detr(state_dict: Dict[str, Tensor],
                            coco80: bool = False) -> 'OrderedDict[str, Tensor]':
    """Original Deformable DETR weights -> ours.

    The original COCO heads have 91 sigmoid outputs (row = COCO category id); ``coco80`` keeps the
    80 used ids for mmdet's ``num_classes=80`` in every decoder layer's class branch. The
    two-stage encoder branch (``class_embed.<num decoder layers>``) is trained class-agnostic and
    only its output 0 is used, to rank the proposals (top-k of ``enc_outputs_class[..., 0]``), so
    its row 0 stays first; its other 79 rows are the COCO ones as elsewhere.
    """
    converted = rename(state_dict, _input_proj_rules(state_dict) + RULES)
    add_batchnorm_counters(converted, 'backbone.')
    if coco80:
        encoder_branch = (_num_decoder_layers(state_dict)
                          if 'transformer.enc_output.weight' in state_dict else None)
        branches = sorted({int(k.split('.')[2]) for k in converted
                           if k.startswith('bbox_head.cls_branches.')})
        for i in branches:
            rows = [0] + COCO80_IDS[1:] if i == encoder_branch else COCO80_IDS
            select_rows(converted, f'bbox_head.cls_branches.{i}', rows)
    return converted
