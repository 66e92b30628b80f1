import os
import os.path as osp
import warnings
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn


def allow_full_checkpoint_loading() -> None:
    """Lets ``torch.load`` read whole mmengine checkpoints in this process, as torch < 2.6 did.

    mmengine 0.10.7 calls ``torch.load`` without ``weights_only``, which torch >= 2.6 makes
    weights-only by default, and its checkpoints also hold the message hub (numpy arrays, bound
    methods) that this mode rejects. The tools call this for the checkpoints the user names
    (CHECKPOINT, --resume, load_from, --weights): load only checkpoints you trust.
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` in the environment keeps the strict mode.
    """
    if 'TORCH_FORCE_WEIGHTS_ONLY_LOAD' not in os.environ:
        os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message is one line."""


def load_detector_checkpoint(model: nn.Module, path: str) -> dict:
    """Loads a checkpoint's weights into ``model``, all of them or none; returns its ``meta``.

    Reads an mmengine checkpoint (weights under ``state_dict``, ``meta`` next to them) or a bare
    state dict, on the CPU, with ``torch.load``'s process-wide setting (the tools call
    :func:`allow_full_checkpoint_loading` first). A ``module.`` prefix (DDP) is removed. When
    mmengine's EMAHook trained the model, ``state_dict`` already holds the averaged weights and
    ``ema_state_dict`` is not needed; ``ema_*`` buffers of mmdet 2.x's EMA hooks are dropped.

    Unlike mmengine's ``load_checkpoint``, which only warns, a checkpoint whose names or shapes
    differ from the model's (another architecture or number of classes) raises CheckpointError
    naming the missing, unexpected and mis-shaped keys, and leaves the model untouched.
    """
    state_dict, meta = _read_checkpoint(path)
    expected = model.state_dict()
    state_dict = {key: value for key, value in state_dict.items()
                  if key in expected or not key.startswith('ema_')}
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    misshaped = sorted(f'{key} {tuple(state_dict[key].shape)} vs {tuple(value.shape)}'
                       for key, value in expected.items()
                       if key in state_dict and state_dict[key].shape != value.shape)
    problems = [f'{len(keys)} {what} {summarize(keys)}' for what, keys in (
        ('missing keys', missing), ('unexpected keys', unexpected),
        ('keys of another shape', misshaped)) if keys]
    if problems:
        raise CheckpointError(f'checkpoint {path!r} does not fit the model '
                              f'({type(model).__name__}): ' + ', '.join(problems))
    model.load_state_dict(state_dict)
    return meta


def _read_checkpoint(path: str) -> Tuple[Dict[str, Tensor], dict]:
    """(weights without ``module.`` prefixes, meta or {}); CheckpointError if unreadable."""
    if not osp.isfile(path):
        raise CheckpointError(f'checkpoint {path!r} does not exist')
    try:
        with warnings.catch_warnings():  # said on every load once the tool allowed it
            warnings.filterwarnings('ignore', 'Environment variable TORCH_FORCE_NO_WEIGHTS')
            checkpoint = torch.load(path, map_location='cpu')
    except Exception as error:  # any unreadable file: pickle, zip or torch errors
        lines = str(error).strip().splitlines() or ['']
        raise CheckpointError(f'cannot read checkpoint {path!r}: {type(error).__name__}: '
                              f'{lines[0]}') from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'checkpoint {path!r} holds a {type(checkpoint).__name__}, '
                              'not a dict of weights')
    state_dict = checkpoint.get('state_dict', checkpoint)
    if not (isinstance(state_dict, dict)
            and all(isinstance(value, Tensor) for value in state_dict.values())):
        raise CheckpointError(f'checkpoint {path!r} has no state_dict of tensors (top-level keys '
                              f'{summarize(sorted(map(str, checkpoint)))}); convert checkpoints '
                              'of other code bases with tools/model_converters/')
    weights = {key[len('module.'):] if key.startswith('module.') else key: value
               for key, value in state_dict.items()}
    return weights, checkpoint.get('meta') or {}


def summarize(keys: List[str], limit: int = 5) -> str:
    """The first ``limit`` keys, and how many more, for a one-line message."""
    more = f', ... (+{len(keys) - limit})' if len(keys) > limit else ''
    return '[' + ', '.join(keys[:limit]) + more + ']'
