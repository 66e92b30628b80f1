"""The command line shared by detr_to_plugin.py, deformable_detr_to_plugin.py, rtdetr_to_plugin.py
and dfine_to_plugin.py: SRC, DST, --trust-checkpoint, --ema / --no-ema where the original saves an
EMA, the save of the converted weights with the SRC entry they came from, and a one-line error
instead of a traceback."""
import argparse
import sys
from typing import Callable, Dict, Optional

from torch import Tensor

from detr_plugin.converters import CheckpointError, save_converted


def parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('src', help="the original authors' checkpoint")
    parser.add_argument('dst', help='the mmengine checkpoint to write')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='read SRC with full unpickling, which can run code in the file: '
                        'only for files you trust (the released checkpoints need no such thing)')
    return parser


def add_ema_options(parser: argparse.ArgumentParser) -> None:
    """``args.ema``: None (the EMA weights when present), True (required) or False ('model')."""
    ema = parser.add_mutually_exclusive_group()
    ema.add_argument('--ema', action='store_true', default=None,
                     help="require the EMA weights ('ema' -> 'module')")
    ema.add_argument('--no-ema', dest='ema', action='store_false', help="take 'model'")


def save_entry(converted: Dict[str, Tensor], args: argparse.Namespace,
               entry: Optional[str]) -> str:
    """Writes ``converted`` to DST, recording SRC and the entry of it the weights came from
    ('model', 'ema', or a bare state dict when None); returns that entry as the summary line
    names it."""
    save_converted(converted, args.dst, args.src, weights=entry or 'state_dict')
    return f"its '{entry}' weights" if entry else 'a bare state dict'


def run(convert: Callable[[argparse.Namespace], str], args: argparse.Namespace) -> None:
    """Runs ``convert(args)`` and prints its summary line; a CheckpointError or an unknown key
    exits with status 1 and a one-line message."""
    try:
        print(convert(args))
    except CheckpointError as error:
        sys.exit(f'error: {error}')
    except KeyError as error:  # a key no conversion rule knows
        sys.exit(f'error: checkpoint {args.src!r}: {error.args[0]}')
