"""lyuwenyu/RT-DETR's rtdetr_pytorch (RT-DETR v1), rtdetrv2_pytorch (RT-DETRv2) and their PResNet
backbones -> detr_plugin ``RTDETR`` / ``ResNetVd``.

RT-DETRv2 has v1's names (its encoder input projections and encoder output layer named rather
than numbered) plus a ``num_points_scale`` buffer in every decoder cross-attention
(1 / P_l for each of level l's P_l points), which ours computes from ``num_points``: it is dropped
after :func:`v2_num_points` has read the point counts from it.

Key map (original -> ours):
    backbone.conv1.conv1_{1,2,3}.{conv,norm}        backbone.stem.{0,1 | 3,4 | 6,7}
    backbone.res_layers.S.blocks.B.branch2{a,b,c}    backbone.layer{S+1}.B.{conv,bn}{1,2,3}
    ...short.{conv,norm} | short.conv.{conv,norm}    ...downsample.{1,2}  (0: the pool)
    encoder.*                                        neck.*  (linear1/2 -> ffn.linear1/2)
    encoder.input_proj.i.{conv,norm}  (v2)           neck.input_proj.i.{0,1}
    decoder.enc_output.{proj,norm}  (v2)             decoder.enc_output.{0,1}
    decoder.decoder.layers.*                         decoder.layers.*  (linear1/2 -> ffn.*)
    decoder.{input_proj,enc_output,query_pos_head}   unchanged under decoder.
    decoder.dec_score_head.i / dec_bbox_head.i       bbox_head.cls_branches.i / reg_branches.i
    decoder.enc_score_head / enc_bbox_head           bbox_head.enc_cls_branch / enc_reg_branch
    decoder.denoising_class_embed                    denoising.label_embed
Frozen BatchNorms have no ``num_batches_tracked``; a zero one is added for mmdet's BatchNorm.
"""
import re
from collections import OrderedDict
from typing import Dict, List

from torch import Tensor

from .rules import add_batchnorm_counters, rename

_STEM = {'conv1_1': (0, 1), 'conv1_2': (3, 4), 'conv1_3': (6, 7)}
_BRANCH = {'branch2a': '1', 'branch2b': '2', 'branch2c': '3'}
_BLOCK = r'^backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.'


def _block(m: re.Match) -> str:
    return f'backbone.layer{int(m[1]) + 1}.{m[2]}.'


RULES = (
    # backbone
    (r'^backbone\.conv1\.(conv1_\d)\.conv\.', lambda m: f'backbone.stem.{_STEM[m[1]][0]}.'),
    (r'^backbone\.conv1\.(conv1_\d)\.norm\.', lambda m: f'backbone.stem.{_STEM[m[1]][1]}.'),
    (_BLOCK + r'(branch2[abc])\.conv\.', lambda m: f'{_block(m)}conv{_BRANCH[m[3]]}.'),
    (_BLOCK + r'(branch2[abc])\.norm\.', lambda m: f'{_block(m)}bn{_BRANCH[m[3]]}.'),
    (_BLOCK + r'short\.conv\.conv\.', lambda m: f'{_block(m)}downsample.1.'),  # pooled shortcut
    (_BLOCK + r'short\.conv\.norm\.', lambda m: f'{_block(m)}downsample.2.'),
    (_BLOCK + r'short\.conv\.', lambda m: f'{_block(m)}downsample.1.'),  # stride-1 shortcut
    (_BLOCK + r'short\.norm\.', lambda m: f'{_block(m)}downsample.2.'),
    # hybrid encoder
    (r'^encoder\.encoder\.(\d+)\.layers\.(\d+)\.(linear[12])\.',
     lambda m: f'neck.encoder.{m[1]}.layers.{m[2]}.ffn.{m[3]}.'),
    (r'^encoder\.pos_embed\d+$', None),  # recomputed from the image size
    (r'^encoder\.input_proj\.(\d+)\.conv\.', r'neck.input_proj.\1.0.'),  # RT-DETRv2's names
    (r'^encoder\.input_proj\.(\d+)\.norm\.', r'neck.input_proj.\1.1.'),
    (r'^encoder\.', 'neck.'),
    # decoder
    (r'^decoder\.(anchors|valid_mask)$', None),  # recomputed from the image size
    (r'^decoder\.decoder\.layers\.\d+\.cross_attn\.num_points_scale$', None),  # RT-DETRv2
    (r'^decoder\.decoder\.layers\.(\d+)\.(linear[12])\.',
     lambda m: f'decoder.layers.{m[1]}.ffn.{m[2]}.'),
    (r'^decoder\.decoder\.layers\.', 'decoder.layers.'),
    (r'^decoder\.dec_score_head\.', 'bbox_head.cls_branches.'),
    (r'^decoder\.dec_bbox_head\.', 'bbox_head.reg_branches.'),
    (r'^decoder\.enc_score_head\.', 'bbox_head.enc_cls_branch.'),
    (r'^decoder\.enc_bbox_head\.', 'bbox_head.enc_reg_branch.'),
    (r'^decoder\.denoising_class_embed\.', 'denoising.label_embed.'),
    (r'^decoder\.enc_output\.proj\.', 'decoder.enc_output.0.'),  # RT-DETRv2's names
    (r'^decoder\.enc_output\.norm\.', 'decoder.enc_output.1.'),
    (r'^decoder\.(input_proj|enc_output|query_pos_head)\.', r'decoder.\1.'),
)


def is_rtdetr(state_dict: Dict[str, Tensor]) -> bool:
    return any(k.startswith(('decoder.dec_score_head.', 'decoder.decoder.layers.'))
               for k in state_dict)


def is_rtdetr_v2(state_dict: Dict[str, Tensor]) -> bool:
    """RT-DETRv2's deformable attention stores a per-level point scale (v1 has none)."""
    return any(k.endswith('.cross_attn.num_points_scale') for k in state_dict)


def v2_num_points(state_dict: Dict[str, Tensor]) -> List[int]:
    """RT-DETRv2's sampling points per level, [P_0, ..., P_{L-1}], read from the first decoder
    layer's ``num_points_scale`` (P_l copies of 1 / P_l, level after level)."""
    scale = state_dict['decoder.decoder.layers.0.cross_attn.num_points_scale'].tolist()
    points, i = [], 0
    while i < len(scale):
        count = round(1 / scale[i])
        points.append(count)
        i += count
    return points


def is_presnet(state_dict: Dict[str, Tensor]) -> bool:
    """A bare PResNet (ImageNet backbone) state dict: ``conv1.conv1_1.*`` and ``res_layers.*``."""
    return (any(k.startswith('conv1.conv1_1.') for k in state_dict)
            and all(k.startswith(('conv1.', 'res_layers.')) for k in state_dict))


def convert_rtdetr(state_dict: Dict[str, Tensor]) -> 'OrderedDict[str, Tensor]':
    """RT-DETR v1 or v2 weights, or a bare PResNet's (converted under ``backbone.``) -> ours."""
    if is_presnet(state_dict):
        state_dict = {f'backbone.{k}': v for k, v in state_dict.items()}
    converted = rename(state_dict, RULES)
    add_batchnorm_counters(converted, 'backbone.')
    return converted
