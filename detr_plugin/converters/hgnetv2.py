"""D-FINE's HGNetv2 weights (Peterande/D-FINE, ``src/nn/backbone/hgnetv2.py``) -> our ``HGNetv2``.

The ImageNet "stage 1" files the D-FINE and DEIM configs start from (``PPHGNetV2_B4_stage1.pth``:
a bare state dict of the original module) load through ``hgnetv2://``::

    backbone=dict(type='HGNetv2', arch='B4', ...,
                  init_cfg=dict(type='Pretrained', checkpoint='hgnetv2://B4'))

``hgnetv2://B0`` ... ``hgnetv2://B6`` download the authors' file once into torch.hub's directory
(``$TORCH_HOME/hub/checkpoints``, where a machine without internet access can be given it by
hand); ``hgnetv2://path/to/PPHGNetV2_B4_stage1.pth`` reads a file already downloaded. The weights
must be exactly those of a preset, every key used and none missing, else CheckpointError (one
line). :func:`hgnetv2_rules` renames the ``backbone.*`` part of a full D-FINE / DEIM checkpoint.

Key map (original -> ours; everything else keeps its name):
    stages.S.blocks.B.layers.L.conv1    stages.S.blocks.B.layers.L.pointwise  (light blocks)
    stages.S.blocks.B.layers.L.conv2    stages.S.blocks.B.layers.L.depthwise
    stages.S.blocks.B.aggregation.0     stages.S.blocks.B.aggregation.squeeze
    stages.S.blocks.B.aggregation.1     stages.S.blocks.B.aggregation.excitation
Frozen BatchNorms have no ``num_batches_tracked``; a zero one is added for mmdet's BatchNorm (our
FrozenBatchNorm2d drops it when loading).
"""
import re
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch
from mmengine.runner import CheckpointLoader
from torch import Tensor

from ..utils.checkpoint_loading import CheckpointError, compare_keys, read_checkpoint, summarize
from .presnet import _download
from .reading import is_state_dict
from .rules import Rule, add_batchnorm_counters, rename

SCHEME = 'hgnetv2://'
_RELEASE = 'https://github.com/Peterande/storage/releases/download/dfinev1.0/'
HGNETV2_URLS = {f'B{i}': f'{_RELEASE}PPHGNetV2_B{i}_stage1.pth' for i in range(7)}


def hgnetv2_rules(prefix: str = '') -> Tuple[Rule, ...]:
    """Rules (see :func:`.rules.rename`) renaming the original's keys under ``prefix`` (e.g.
    'backbone.' in a full D-FINE checkpoint) to ours under the same prefix; only the layers an
    HGNetv2 has match."""
    p = '^' + re.escape(prefix)
    layer = r'(stages\.\d+\.blocks\.\d+\.layers\.\d+\.)'
    block = r'(stages\.\d+\.blocks\.\d+\.)'

    def to(suffix: str):
        return lambda m: f'{prefix}{m[1]}{suffix}'

    return (
        (p + r'(stem\.stem(?:1|2a|2b|3|4)\.(?:conv|bn|lab)\.)', to('')),
        (p + r'(stages\.\d+\.downsample\.(?:conv|bn)\.)', to('')),
        (p + layer + r'conv1\.(?=(?:conv|bn)\.)', to('pointwise.')),
        (p + layer + r'conv2\.(?=(?:conv|bn|lab)\.)', to('depthwise.')),
        (p + layer + r'(?=(?:conv|bn|lab)\.)', to('')),
        (p + block + r'aggregation\.0\.(?=(?:conv|bn|lab)\.)', to('aggregation.squeeze.')),
        (p + block + r'aggregation\.1\.(?=(?:conv|bn|lab)\.)', to('aggregation.excitation.')),
    )


def convert_hgnetv2(state_dict: Dict[str, Tensor]) -> 'OrderedDict[str, Tensor]':
    """The original HGNetv2's state dict (no prefix) -> ours; KeyError on a key it has no
    counterpart for."""
    converted = rename(state_dict, hgnetv2_rules())
    add_batchnorm_counters(converted)
    return converted


def preset_state_dict(arch: str, use_lab: bool) -> Dict[str, Tensor]:
    """Our ``HGNetv2(arch)``'s state dict (with BatchNorm) as data-less 'meta' tensors: the
    names and shapes a converted file must have."""
    from ..models.backbones.hgnetv2 import HGNetv2  # the models import the whole package
    with torch.device('meta'):
        return HGNetv2(arch, use_lab=use_lab, norm_cfg=dict(type='BN')).state_dict()


def _stage1_weights(checkpoint: dict, path: str) -> Dict[str, Tensor]:
    """The state dict of a stage-1 file: the whole file, or its 'model' or 'state_dict' entry."""
    for weights in (checkpoint, checkpoint.get('model'), checkpoint.get('state_dict')):
        if is_state_dict(weights):
            return weights
    raise CheckpointError(f'checkpoint {path!r} holds no HGNetv2 state dict (its entries: '
                          f'{summarize(sorted(map(str, checkpoint)))})')


def _check_preset(state_dict: Dict[str, Tensor], path: str, arch: Optional[str]) -> None:
    """CheckpointError (one line) unless ``state_dict`` has exactly the names and shapes of
    preset ``arch`` (any preset when None)."""
    use_lab = any('.lab.' in key for key in state_dict)
    comparisons = {name: compare_keys(preset_state_dict(name, use_lab), state_dict)
                   for name in ([arch] if arch else HGNETV2_URLS)}
    if any(c.fits for c in comparisons.values()):
        return
    closest = max(comparisons, key=lambda name: len(comparisons[name].matching))
    which = f'HGNetv2-{arch}' if arch else f'any HGNetv2 preset (closest {closest})'
    raise CheckpointError(f'checkpoint {path!r} does not fit {which} (use_lab={use_lab}): '
                          f'{comparisons[closest].describe()}')


def load_hgnetv2(path: str, arch: Optional[str] = None) -> 'OrderedDict[str, Tensor]':
    """The original HGNetv2 weights in file ``path`` in our names (no prefix), checked against
    preset ``arch`` (or any preset); CheckpointError (one line naming the file and a key)."""
    weights = _stage1_weights(read_checkpoint(path), path)
    try:
        converted = convert_hgnetv2(weights)
    except KeyError as error:
        raise CheckpointError(f'checkpoint {path!r} is no original HGNetv2 state dict: '
                              f'{error.args[0]}') from None
    _check_preset(converted, path, arch)
    return converted


def load_from_hgnetv2(filename: str, map_location=None) -> 'OrderedDict[str, Tensor]':
    """``hgnetv2://B4`` (the authors' file, downloaded once) or ``hgnetv2://FILE`` -> our
    ``HGNetv2`` weights on the CPU. (mmengine logs the loader's name after ``load_from_``.)"""
    target = filename[len(SCHEME):]
    if target in HGNETV2_URLS:
        return load_hgnetv2(_download(HGNETV2_URLS[target]), target)
    return load_hgnetv2(target)


CheckpointLoader.register_scheme(SCHEME, load_from_hgnetv2)
