"""facebookresearch/detr's DETR (R50, R101, DC5) -> detr_plugin ``DETR``.

Key map (original -> ours):
    backbone.0.body.*                                backbone.*  (+ num_batches_tracked)
    input_proj                                       neck.convs.0.conv
    transformer.encoder.layers.i.linear{1,2}         encoder.layers.i.ffn.linear{1,2}
    transformer.decoder.layers.i.multihead_attn      decoder.layers.i.cross_attn
    transformer.decoder.layers.i.linear{1,2}         decoder.layers.i.ffn.linear{1,2}
    transformer.{encoder,decoder}.norm               {encoder,decoder}.norm
    query_embed                                      query_embedding
    class_embed / bbox_embed                         bbox_head.fc_cls / fc_reg
Attention weights keep nn.MultiheadAttention's layout (in_proj_weight, out_proj), as ours.
"""
from collections import OrderedDict
from typing import Dict

from torch import Tensor

from .rules import (COCO80_IDS, TORCHVISION_BACKBONE_RULES, add_batchnorm_counters, rename,
                    select_rows)

_LAYER = r'^transformer\.(encoder|decoder)\.layers\.(\d+)\.'
RULES = TORCHVISION_BACKBONE_RULES + (
    (r'^input_proj\.', 'neck.convs.0.conv.'),
    (_LAYER + r'(linear[12])\.', r'\1.layers.\2.ffn.\3.'),
    (_LAYER + r'multihead_attn\.', r'\1.layers.\2.cross_attn.'),
    (_LAYER + r'(self_attn|norm[123])\.', r'\1.layers.\2.\3.'),
    (r'^transformer\.(encoder|decoder)\.norm\.', r'\1.norm.'),
    (r'^query_embed\.', 'query_embedding.'),
    (r'^class_embed\.', 'bbox_head.fc_cls.'),
    (r'^bbox_embed\.layers\.', 'bbox_head.fc_reg.layers.'),
)


def is_detr(state_dict: Dict[str, Tensor]) -> bool:
    """DETR's decoder layers have a ``multihead_attn`` (Deformable DETR's a ``cross_attn``)."""
    return any(k.startswith('transformer.decoder.layers.') and '.multihead_attn.' in k
               for k in state_dict)


def convert_detr(state_dict: Dict[str, Tensor], coco80: bool = False) -> 'OrderedDict[str, Tensor]':
    """Original DETR weights -> ours.

    The original COCO head has 91 + 1 softmax outputs (row = COCO category id, no-object last);
    ``coco80`` keeps the 80 used ids and no-object, for mmdet's ``num_classes=80``.
    """
    converted = rename(state_dict, RULES)
    add_batchnorm_counters(converted, 'backbone.')
    if coco80:
        no_object = converted['bbox_head.fc_cls.bias'].numel() - 1
        select_rows(converted, 'bbox_head.fc_cls', COCO80_IDS + [no_object])
    return converted
