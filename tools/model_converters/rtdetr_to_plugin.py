"""Converts an RT-DETR (rtdetr_pytorch) or RT-DETRv2 (rtdetrv2_pytorch) checkpoint of
lyuwenyu/RT-DETR to a detr_plugin one.

    python tools/model_converters/rtdetr_to_plugin.py SRC.pth DST.pth [--ema | --no-ema]

SRC may be a training checkpoint (``{'model': ..., 'ema': {'module': ...}}``: the EMA weights are
taken when there are some, as the released checkpoints are evaluated with them; ``--ema``
requires them, ``--no-ema`` takes 'model'), or a bare state dict, e.g. a PResNet ImageNet
checkpoint (converted under ``backbone.``). DST is an mmengine checkpoint ``{'state_dict': ...,
'meta': ...}`` for the configs in configs/rtdetr/ or configs/rtdetrv2/ (load it with ``load_from``
or tools/test.py); for RT-DETRv2 the sampling points per level found in the checkpoint are
printed: the config's ``decoder.layer_cfg.num_points`` must be the same. Key map:
detr_plugin/converters/rtdetr.py.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from original_checkpoint import add_ema_options, parser, run, save_entry  # noqa: E402

from detr_plugin.converters import (convert_rtdetr, is_rtdetr_v2, load_original,  # noqa: E402
                                    v2_num_points)


def convert(args: argparse.Namespace) -> str:
    weights, entry = load_original(args.src, 'RT-DETR', args.trust_checkpoint, args.ema)
    family = 'RT-DETR'
    if is_rtdetr_v2(weights):
        family = f'RT-DETRv2 (num_points {v2_num_points(weights)})'
    converted = convert_rtdetr(weights)
    where = save_entry(converted, args, entry)
    return f'{family}, {where}: {len(converted)} tensors -> {args.dst}'


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    add_ema_options(cli)
    run(convert, cli.parse_args())


if __name__ == '__main__':
    main()
