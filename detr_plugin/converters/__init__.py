"""The original authors' checkpoints -> detr_plugin state dicts.

:func:`convert_original_checkpoint` recognises a checkpoint of facebookresearch/detr,
fundamentalvision/Deformable-DETR, lyuwenyu/RT-DETR (rtdetr_pytorch and rtdetrv2_pytorch),
Peterande/D-FINE or ShihuaHuang95/DEIM (its D-FINE models, named as D-FINE's) by its keys and
renames its weights to ours; the scripts in tools/model_converters/ are command lines around it.
"""
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..utils.checkpoint_loading import CheckpointError, read_checkpoint, summarize
from .deformable_detr import (VARIANT_CONFIGS, convert_deformable_detr, deformable_detr_variant,
                              is_deformable_detr)
from .detr import convert_detr, is_detr
from .dfine import convert_dfine, is_dfine
from .hgnetv2 import HGNETV2_URLS, convert_hgnetv2, hgnetv2_rules, load_from_hgnetv2
from .presnet import PRESNET_URLS, load_from_presnet
from .reading import original_weights, weights_entry
from .rtdetr import convert_rtdetr, is_presnet, is_rtdetr, is_rtdetr_v2, v2_num_points

__all__ = [
    'CheckpointError', 'PRESNET_URLS', 'VARIANT_CONFIGS', 'check_family', 'convert_deformable_detr',
    'convert_detr', 'convert_dfine', 'convert_original_checkpoint', 'convert_rtdetr',
    'deformable_detr_variant',
    'HGNETV2_URLS', 'convert_hgnetv2', 'hgnetv2_rules', 'load_from_hgnetv2',
    'is_rtdetr_v2',
    'load_original', 'load_from_presnet', 'original_family', 'original_weights',
    'save_converted', 'v2_num_points'
]


def original_family(state_dict: Dict[str, Tensor]) -> Optional[str]:
    """'DETR', 'Deformable DETR', 'RT-DETR', 'RT-DETRv2', 'PResNet' (an RT-DETR ImageNet
    backbone) or 'D-FINE' (also DEIM-D-FINE), from the keys of an original state dict; None for
    any other."""
    if is_dfine(state_dict):  # before RT-DETR: D-FINE's decoder carries RT-DETRv2's names too
        return 'D-FINE'
    if is_deformable_detr(state_dict):
        return 'Deformable DETR'
    if is_detr(state_dict):
        return 'DETR'
    if is_rtdetr(state_dict):
        return 'RT-DETRv2' if is_rtdetr_v2(state_dict) else 'RT-DETR'
    if is_presnet(state_dict):
        return 'PResNet'
    return None


def check_family(state_dict: Dict[str, Tensor], expected: str, source: str) -> None:
    """CheckpointError (one line) unless ``state_dict`` is of the family ``expected``."""
    family = original_family(state_dict)
    accepted = {'RT-DETR': ('RT-DETR', 'RT-DETRv2', 'PResNet')}.get(expected, (expected, ))
    if family not in accepted:
        looks = f'looks like {family}' if family else 'is of no family we know'
        raise CheckpointError(f'checkpoint {source!r} {looks}, not {expected} '
                              f'(first keys: {list(state_dict)[:3]})')


def load_original(path: str, family: str, trust: bool = False,
                  ema: Optional[bool] = None) -> Tuple[Dict[str, Tensor], str]:
    """(weights, where they were: 'ema', 'model' or '') of the original ``family``'s checkpoint
    in ``path``; CheckpointError (one line) for an unreadable file, no weights, or weights of
    another family. ``trust``: full unpickling; ``ema``: see :func:`weights_entry`."""
    checkpoint = read_checkpoint(path, trust)
    weights = original_weights(checkpoint, path, ema)
    if weights is None:
        raise CheckpointError(f'checkpoint {path!r} holds no original {family} weights (its '
                              f'entries: {summarize(sorted(map(str, checkpoint)))}); is it '
                              'converted already?')
    check_family(weights, family, path)
    return weights, weights_entry(checkpoint, ema)


def convert_original_checkpoint(checkpoint: dict, source: str) -> Optional[dict]:
    """Our state dict (name -> tensor) from an original authors' checkpoint, as ``torch.load``
    returned it; None when it is not in an original layout (e.g. already ours).

    RT-DETR and D-FINE / DEIM training checkpoints give their EMA weights (what the released ones
    are evaluated with). Class heads keep the original size (DETR 92, Deformable DETR 91, RT-DETR
    and D-FINE 80 outputs).
    ``source`` names the checkpoint in messages. Raises CheckpointError (one line) when the layout
    is recognised but unusable (the weights' entry is missing).
    """
    weights = original_weights(checkpoint, source)
    if weights is None:
        return None
    family = original_family(weights)
    if family is None:
        return None
    check_family(weights, 'RT-DETR' if family.startswith('RT-DETR') else family, source)
    convert = {'DETR': convert_detr, 'Deformable DETR': convert_deformable_detr,
               'RT-DETR': convert_rtdetr, 'RT-DETRv2': convert_rtdetr,
               'PResNet': convert_rtdetr, 'D-FINE': convert_dfine}[family]
    try:
        return convert(weights)
    except KeyError as error:  # a key no rule knows: a variant of the family we do not support
        raise CheckpointError(
            f'checkpoint {source!r} looks like {family} but {error.args[0]}') from None


def save_converted(state_dict: 'OrderedDict[str, Tensor]', path: str, source: str,
                   **meta) -> None:
    """Writes an mmengine checkpoint ``{'state_dict': ..., 'meta': {'converted_from': ...}}``."""
    torch.save(dict(state_dict=state_dict, meta=dict(converted_from=source, **meta)), path)
