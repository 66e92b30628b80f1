"""Finding the weights in an original authors' checkpoint.

Files are read by :func:`detr_plugin.utils.read_checkpoint` (weights-only): the originals hold
state dicts, numbers, strings and, in facebookresearch/detr's and fundamentalvision/
Deformable-DETR's ``'args'``, an ``argparse.Namespace``, which detr_plugin.utils.safe_globals
allow-lists; lyuwenyu/RT-DETR's add an ISO date string and an EMA entry.
"""
from typing import Dict, Optional

from torch import Tensor

from ..utils.checkpoint_loading import CheckpointError, summarize


def is_state_dict(value) -> bool:
    return (isinstance(value, dict) and len(value) > 0
            and all(isinstance(v, Tensor) for v in value.values()))


def entry_weights(checkpoint: dict, entry: str, source: str) -> Dict[str, Tensor]:
    """The state dict under ``entry`` ('model', or 'ema' whose weights are under 'module')."""
    holder, key = checkpoint, entry
    if entry == 'ema' and isinstance(checkpoint.get('ema'), dict):
        holder, key = checkpoint['ema'], 'module'
    if not is_state_dict(holder.get(key)):
        where = "'ema' -> 'module'" if entry == 'ema' else repr(entry)
        whose = "its 'ema' entries" if holder is not checkpoint else 'its entries'
        raise CheckpointError(f'checkpoint {source!r} has no weights under {where} ({whose}: '
                              f'{summarize(sorted(map(str, holder)))})')
    return holder[key]


def weights_entry(checkpoint: dict, ema: Optional[bool] = None) -> Optional[str]:
    """Where an original checkpoint keeps its weights: 'ema' (RT-DETR's averaged weights, under
    'ema' -> 'module'), 'model', '' (the whole dict is a state dict, e.g. an ImageNet backbone) or
    None (nowhere we know). ``ema``: None takes 'ema' when present, True requires it, False
    takes 'model'."""
    if ema or (ema is None and 'ema' in checkpoint):
        return 'ema'
    if 'model' in checkpoint:
        return 'model'
    if is_state_dict(checkpoint):
        return ''
    return 'model' if ema is False else None


def original_weights(checkpoint: dict, source: str,
                     ema: Optional[bool] = None) -> Optional[Dict[str, Tensor]]:
    """The weights of an original authors' checkpoint (see :func:`weights_entry`), or None when
    it holds none of their entries.

    CheckpointError when the entry asked for is missing, or when the originals' training state
    (``args`` and ``epoch``, or ``last_epoch``) comes without weights.
    """
    entry = weights_entry(checkpoint, ema)
    if entry:
        return entry_weights(checkpoint, entry, source)
    if entry == '':
        return checkpoint
    if {'args', 'epoch'} <= checkpoint.keys() or 'last_epoch' in checkpoint:
        raise CheckpointError(f'checkpoint {source!r} looks like an original training checkpoint '
                              f"but has no weights under 'model' or 'ema' (its entries: "
                              f'{summarize(sorted(map(str, checkpoint)))})')
    return None
