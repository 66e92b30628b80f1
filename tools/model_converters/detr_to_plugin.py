"""Converts a facebookresearch/detr checkpoint to a detr_plugin one.

    python tools/model_converters/detr_to_plugin.py SRC.pth DST.pth [--coco80]

DST is an mmengine checkpoint ``{'state_dict': ..., 'meta': ...}`` for configs/detr/ (load it with
``load_from`` or tools/test.py); DC5 and R101 checkpoints convert the same way. The original COCO
heads have 91 + 1 softmax outputs (index = COCO category id, no-object last); ``--coco80`` keeps
the 80 used ones and no-object for mmdet's ``num_classes=80``, otherwise set
``model.bbox_head.num_classes=91``.

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
import argparse
import os.path as osp
import sys
from collections import OrderedDict
from typing import Dict

from torch import Tensor

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from original_checkpoint import (BACKBONE_RULES, COCO80_IDS, add_batchnorm_counters,  # noqa: E402
                                 load_original, rename, save, select_rows)

_LAYER = r'^transformer\.(encoder|decoder)\.layers\.(\d+)\.'
RULES = BACKBONE_RULES + (
    (r'^input_proj\.', 'neck.convs.0.conv.'),
    (_LAYER + r'(linear[12])\.', r'\1.layers.\2.ffn.\3.'),
    (_LAYER + r'multihead_attn\.', r'\1.layers.\2.cross_attn.'),
    (_LAYER + r'(self_attn|norm[123])\.', r'\1.layers.\2.\3.'),
    (r'^transformer\.(encoder|decoder)\.norm\.', r'\1.norm.'),
    (r'^query_embed\.', 'query_embedding.'),
    (r'^class_embed\.', 'bbox_head.fc_cls.'),
    (r'^bbox_embed\.layers\.', 'bbox_head.fc_reg.layers.'),
)


def convert(state_dict: Dict[str, Tensor], coco80: bool = False) -> 'OrderedDict[str, Tensor]':
    converted = rename(state_dict, RULES)
    add_batchnorm_counters(converted)
    if coco80:
        no_object = converted['bbox_head.fc_cls.bias'].numel() - 1
        select_rows(converted, ['bbox_head.fc_cls'], COCO80_IDS + [no_object])
    return converted


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='original checkpoint')
    parser.add_argument('dst', help='output mmengine checkpoint')
    parser.add_argument('--coco80', action='store_true',
                        help='keep the 80 COCO classes (and no-object) of the 92 class outputs')
    args = parser.parse_args()
    converted = convert(load_original(args.src), args.coco80)
    save(converted, args.dst, args.src)
    num_classes = converted['bbox_head.fc_cls.bias'].numel() - 1
    print(f'DETR, {num_classes} classes + no-object: {len(converted)} tensors -> {args.dst}')


if __name__ == '__main__':
    main()
