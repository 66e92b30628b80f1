"""The command line shared by detr_to_plugin.py, deformable_detr_to_plugin.py, rtdetr_to_plugin.py
and dfine_to_plugin.py: SRC, DST, --trust-checkpoint, --ema / --no-ema where the original saves an
EMA, and a one-line error instead of a traceback."""
import argparse
import sys
from typing import Callable

from detr_plugin.converters import CheckpointError


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


def run(convert: Callable[[argparse.Namespace], str], args: argparse.Namespace) -> None:
    """Runs ``convert(args)`` and prints its summary line; a CheckpointError or an unknown key
    exits with status 1 and a one-line message."""
    try:
        print(convert(args))
    except CheckpointError as error:
        sys.exit(f'error: {error}')
    except KeyError as error:  # a key no conversion rule knows
        sys.exit(f'error: checkpoint {args.src!r}: {error.args[0]}')
