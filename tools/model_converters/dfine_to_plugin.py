"""Converts a D-FINE (Peterande/D-FINE) or DEIM-D-FINE (ShihuaHuang95/DEIM) checkpoint to a
detr_plugin one.

    python tools/model_converters/dfine_to_plugin.py SRC.pth DST.pth [--ema | --no-ema]

SRC is a checkpoint as the originals' solvers write it (``{'model': ..., 'ema': {'module': ...,
'updates': ...}, 'last_epoch': ..., ...}``: the EMA weights are taken when there are some, as the
released checkpoints are evaluated with them; ``--ema`` requires them, ``--no-ema`` takes
'model'), or a bare state dict. D-FINE and DEIM-D-FINE models have the same names (DEIM changes
activations, which hold no weights), so either tool reads either; the config decides which model
the weights go into (configs/dfine/ or configs/deim/, the size the printed widths and layers
match). DST is an mmengine checkpoint ``{'state_dict': ..., 'meta': ...}`` (load it with
``load_from`` or tools/test.py). Key map: detr_plugin/converters/dfine.py.
"""
import argparse
import os.path as osp
import sys
from typing import Dict

from torch import Tensor

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from original_checkpoint import add_ema_options, parser, run, save_entry  # noqa: E402

from detr_plugin.converters import convert_dfine, load_original  # noqa: E402


def describe(weights: Dict[str, Tensor]) -> str:
    """Decoder layers, classes and encoder / decoder widths, read from the weights."""
    layers = len({k.split('.')[2] for k in weights if k.startswith('decoder.dec_score_head.')})
    classes, width = weights['decoder.dec_score_head.0.weight'].shape
    encoder = weights['encoder.input_proj.0.conv.weight'].shape[0]
    return f'{layers} decoder layers, {classes} classes, encoder {encoder} / decoder {width} wide'


def convert(args: argparse.Namespace) -> str:
    weights, entry = load_original(args.src, 'D-FINE', args.trust_checkpoint, args.ema)
    converted = convert_dfine(weights)
    where = save_entry(converted, args, entry)
    return f'D-FINE / DEIM-D-FINE ({describe(weights)}), {where}: {len(converted)} tensors -> ' \
           f'{args.dst}'


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    add_ema_options(cli)
    run(convert, cli.parse_args())


if __name__ == '__main__':
    main()
