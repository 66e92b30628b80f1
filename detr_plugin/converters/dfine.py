"""Peterande/D-FINE and ShihuaHuang95/DEIM (its D-FINE models) -> detr_plugin: the hybrid encoder.

The D-FINE encoder's blocks carry the original's names (``cv1``..``cv4``, ``conv1``,
``bottlenecks``), so only the transformer layer's feed-forward, the input projections' named
``conv`` / ``norm`` and the ``nn.Sequential`` around each SCDown are renamed. The full-model
converter adds its backbone and decoder rules to :data:`ENCODER_RULES`.

Key map (original -> ours):
    encoder.encoder.E.layers.L.linear{1,2}     neck.encoder.E.layers.L.ffn.linear{1,2}
    encoder.input_proj.i.{conv,norm}           neck.input_proj.i.{0,1}
    encoder.downsample_convs.i.0.*             neck.downsample_convs.i.*
    encoder.pos_embed<level>                   (dropped: recomputed from the image size)
    encoder.*                                  neck.*
"""
from collections import OrderedDict
from typing import Dict, Tuple

from torch import Tensor

from .hgnetv2 import hgnetv2_rules
from .rules import Rule, add_batchnorm_counters, rename

ENCODER_RULES: Tuple[Rule, ...] = (
    (r'^encoder\.encoder\.(\d+)\.layers\.(\d+)\.(linear[12])\.',
     lambda m: f'neck.encoder.{m[1]}.layers.{m[2]}.ffn.{m[3]}.'),
    (r'^encoder\.pos_embed\d+$', None),
    (r'^encoder\.input_proj\.(\d+)\.conv\.', r'neck.input_proj.\1.0.'),
    (r'^encoder\.input_proj\.(\d+)\.norm\.', r'neck.input_proj.\1.1.'),
    (r'^encoder\.downsample_convs\.(\d+)\.0\.', r'neck.downsample_convs.\1.'),
    (r'^encoder\.', 'neck.'),
)


def convert_dfine_encoder(state_dict: Dict[str, Tensor]) -> 'OrderedDict[str, Tensor]':
    """The ``encoder.*`` weights of a D-FINE / DEIM-D-FINE state dict -> our ``neck.*``; other
    keys are ignored. KeyError for an encoder key no rule knows."""
    return rename({k: v for k, v in state_dict.items() if k.startswith('encoder.')},
                  ENCODER_RULES)

# Key map of the decoder side (original -> ours):
#     decoder.decoder.layers.L.linear{1,2}        decoder.layers.L.ffn.linear{1,2}
#     decoder.decoder.layers.L.*                  decoder.layers.L.*
#     decoder.decoder.lqe_layers.L.reg_conf.*     bbox_head.lqe_branches.L.*
#     decoder.{up,reg_scale}                      bbox_head.{up,reg_scale}
#     decoder.dec_score_head / dec_bbox_head      bbox_head.cls_branches / reg_branches
#     decoder.pre_bbox_head                       bbox_head.pre_reg_branch
#     decoder.enc_score_head / enc_bbox_head      bbox_head.enc_cls_branch / enc_reg_branch
#     decoder.enc_output.{proj,norm}              decoder.enc_output.{0,1}
#     decoder.denoising_class_embed               denoising.label_embed
#     decoder.{input_proj,query_pos_head}.*       decoder.{input_proj,query_pos_head}.*
# dropped: decoder.decoder.{up,reg_scale} (the same tensors again), the attention's
# num_points_scale (a constant), decoder.{anchors,valid_mask} (recomputed from the image size)
DECODER_RULES: Tuple[Rule, ...] = (
    (r'^decoder\.(anchors|valid_mask)$', None),
    (r'^decoder\.decoder\.(up|reg_scale)$', None),
    (r'^decoder\.decoder\.layers\.\d+\.cross_attn\.num_points_scale$', None),
    (r'^decoder\.decoder\.layers\.(\d+)\.(linear[12])\.', r'decoder.layers.\1.ffn.\2.'),
    (r'^decoder\.decoder\.layers\.', 'decoder.layers.'),
    (r'^decoder\.decoder\.lqe_layers\.(\d+)\.reg_conf\.', r'bbox_head.lqe_branches.\1.'),
    (r'^decoder\.(up|reg_scale)$', r'bbox_head.\1'),
    (r'^decoder\.dec_score_head\.', 'bbox_head.cls_branches.'),
    (r'^decoder\.dec_bbox_head\.', 'bbox_head.reg_branches.'),
    (r'^decoder\.pre_bbox_head\.', 'bbox_head.pre_reg_branch.'),
    (r'^decoder\.enc_score_head\.', 'bbox_head.enc_cls_branch.'),
    (r'^decoder\.enc_bbox_head\.', 'bbox_head.enc_reg_branch.'),
    (r'^decoder\.enc_output\.proj\.', 'decoder.enc_output.0.'),
    (r'^decoder\.enc_output\.norm\.', 'decoder.enc_output.1.'),
    (r'^decoder\.denoising_class_embed\.', 'denoising.label_embed.'),
    (r'^decoder\.(input_proj|query_pos_head)\.', r'decoder.\1.'),
)


def convert_dfine_decoder(state_dict: Dict[str, Tensor]) -> 'OrderedDict[str, Tensor]':
    """The ``decoder.*`` weights of a D-FINE / DEIM-D-FINE state dict -> our ``decoder.*``,
    ``bbox_head.*`` and ``denoising.*``; other keys are ignored. KeyError for a decoder key no
    rule knows."""
    return rename({k: v for k, v in state_dict.items() if k.startswith('decoder.')},
                  DECODER_RULES)


def is_dfine(state_dict: Dict[str, Tensor]) -> bool:
    """A D-FINE or DEIM-D-FINE model (the two have the same names): its LQE layers or pre-box
    head, which RT-DETR's decoder has not."""
    return any(k.startswith(('decoder.decoder.lqe_layers.', 'decoder.pre_bbox_head.'))
               for k in state_dict)


def convert_dfine(state_dict: Dict[str, Tensor]) -> 'OrderedDict[str, Tensor]':
    """A whole D-FINE / DEIM-D-FINE state dict (``backbone.*`` HGNetv2, ``encoder.*``,
    ``decoder.*``) -> ours. KeyError for a key no rule knows."""
    unknown = [k for k in state_dict if not k.startswith(('backbone.', 'encoder.', 'decoder.'))]
    if unknown:
        raise KeyError(f'{len(unknown)} keys outside backbone/encoder/decoder, e.g. {unknown[:5]}')
    converted = rename({k: v for k, v in state_dict.items() if k.startswith('backbone.')},
                       hgnetv2_rules('backbone.'))
    add_batchnorm_counters(converted, 'backbone.')
    converted.update(convert_dfine_encoder(state_dict))
    converted.update(convert_dfine_decoder(state_dict))
    return converted
