"""Helpers shared by detr_to_plugin.py and deformable_detr_to_plugin.py: reading an original
facebookresearch/detr or fundamentalvision/Deformable-DETR checkpoint, renaming its keys by
rules, the torchvision ResNet under ``backbone.0.body.``, COCO's 80 of 91 class ids, and writing
an mmengine checkpoint."""
import re
from collections import OrderedDict
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

# COCO category ids 1..90 without the 10 unused ones: row ``id`` of an original 91-class head is
# class ``COCO80_IDS.index(id)`` of mmdet's CocoDataset (classes in ascending id order).
COCO80_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]

# (pattern, replacement) on the full key; the first matching rule renames it; replacement None
# drops the key
Rule = Tuple[str, Union[None, str, Callable[[re.Match], str]]]

BACKBONE_RULES: Tuple[Rule, ...] = (
    # torchvision's ResNet names (conv1, bn1, layerN.M.{conv,bn}K, downsample.{0,1}) are mmdet's
    (r'^backbone\.0\.body\.', 'backbone.'),
)


def load_original(path: str) -> Dict[str, Tensor]:
    """The model weights of an original checkpoint (``{'model': state_dict, ...}`` or bare)."""
    checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    return checkpoint.get('model', checkpoint)


def rename(state_dict: Dict[str, Tensor], rules: Sequence[Rule]) -> 'OrderedDict[str, Tensor]':
    """Applies the first matching rule to every key; raises on a key no rule matches."""
    out = OrderedDict()
    unmatched = []
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            if re.match(pattern, key):
                if replacement is not None:
                    out[re.sub(pattern, replacement, key, count=1)] = value
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise KeyError(f'{len(unmatched)} keys match no conversion rule, e.g. {unmatched[:5]}')
    return out


def add_batchnorm_counters(state_dict: 'OrderedDict[str, Tensor]') -> None:
    """The originals' frozen BatchNorms have no ``num_batches_tracked``; mmdet's BatchNorm does."""
    for key in [k for k in state_dict if k.endswith('.running_mean')]:
        counter = key[:-len('running_mean')] + 'num_batches_tracked'
        state_dict.setdefault(counter, torch.tensor(0, dtype=torch.long))


def select_rows(state_dict: Dict[str, Tensor], prefixes: Sequence[str],
                rows: Sequence[int]) -> None:
    """Keeps ``rows`` of the weight and bias of the linear layers under ``prefixes``."""
    index = torch.as_tensor(rows, dtype=torch.long)
    for prefix in prefixes:
        for name in ('weight', 'bias'):
            key = f'{prefix}.{name}'
            state_dict[key] = state_dict[key].index_select(0, index).clone()


def save(state_dict: Dict[str, Tensor], path: str, source: str, extra_meta: Optional[dict] = None):
    meta = dict(converted_from=source, **(extra_meta or {}))
    torch.save(dict(state_dict=state_dict, meta=meta), path)
