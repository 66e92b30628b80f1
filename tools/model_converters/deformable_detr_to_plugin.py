"""Converts a fundamentalvision/Deformable-DETR checkpoint to a detr_plugin one.

    python tools/model_converters/deformable_detr_to_plugin.py SRC.pth DST.pth [--coco80] \
        [--variant {plain,refine,refine-twostage}]

Works for the plain, ``--with_box_refine`` and ``--with_box_refine --two_stage`` models (the
variant is read from the keys and printed with its config; ``--variant`` refuses a checkpoint of
another one). DST is an mmengine checkpoint ``{'state_dict': ..., 'meta': ...}`` for that config
(load it with ``load_from`` or tools/test.py). The original COCO heads have 91 sigmoid outputs
indexed by COCO category id; ``--coco80`` keeps the 80 used ones for mmdet's ``num_classes=80``
(the two-stage encoder's proposal score stays first), otherwise set
``model.bbox_head.num_classes=91``. Key map: detr_plugin/converters/deformable_detr.py.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from original_checkpoint import parser, run  # noqa: E402

from detr_plugin.converters import (VARIANT_CONFIGS, CheckpointError,  # noqa: E402
                                    convert_deformable_detr, deformable_detr_variant, load_original,
                                    save_converted)


def convert(args: argparse.Namespace) -> str:
    weights, _ = load_original(args.src, 'Deformable DETR', args.trust_checkpoint)
    variant = deformable_detr_variant(weights)
    if args.variant and variant != args.variant:
        raise CheckpointError(f'checkpoint {args.src!r} looks like the {variant} Deformable DETR '
                              f'({VARIANT_CONFIGS.get(variant, "no config of ours")}), not '
                              f'{args.variant}')
    converted = convert_deformable_detr(weights, args.coco80)
    save_converted(converted, args.dst, args.src, variant=variant)
    num_classes = converted['bbox_head.cls_branches.0.bias'].numel()
    return (f'{variant} Deformable DETR, {num_classes} classes: {len(converted)} tensors -> '
            f'{args.dst} (config: {VARIANT_CONFIGS.get(variant, "none of ours")})')


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument('--coco80', action='store_true',
                     help='keep the 80 COCO classes of the 91 class outputs')
    cli.add_argument('--variant', choices=sorted(VARIANT_CONFIGS),
                     help='refuse a checkpoint of another variant')
    run(convert, cli.parse_args())


if __name__ == '__main__':
    main()
