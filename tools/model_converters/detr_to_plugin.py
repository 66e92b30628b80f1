"""Converts a facebookresearch/detr checkpoint to a detr_plugin one.

    python tools/model_converters/detr_to_plugin.py SRC.pth DST.pth [--coco80]

DST is an mmengine checkpoint ``{'state_dict': ..., 'meta': ...}`` for configs/detr/ (load it with
``load_from`` or tools/test.py); DC5 and R101 checkpoints convert the same way. The original COCO
heads have 91 + 1 softmax outputs (index = COCO category id, no-object last); ``--coco80`` keeps
the 80 used ones and no-object for mmdet's ``num_classes=80``, otherwise set
``model.bbox_head.num_classes=91``. Key map: detr_plugin/converters/detr.py.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from original_checkpoint import parser, run  # noqa: E402

from detr_plugin.converters import convert_detr, load_original, save_converted  # noqa: E402


def convert(args: argparse.Namespace) -> str:
    weights, _ = load_original(args.src, 'DETR', args.trust_checkpoint)
    converted = convert_detr(weights, args.coco80)
    save_converted(converted, args.dst, args.src)
    num_classes = converted['bbox_head.fc_cls.bias'].numel() - 1
    return f'DETR, {num_classes} classes + no-object: {len(converted)} tensors -> {args.dst}'


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument('--coco80', action='store_true',
                     help='keep the 80 COCO classes (and no-object) of the 92 class outputs')
    args = cli.parse_args()
    run(convert, args)


if __name__ == '__main__':
    main()
