"""Renaming an original state dict by rules, and the class rows of COCO's 91 category ids."""
import re
from collections import OrderedDict
from typing import Callable, Dict, Sequence, Tuple, Union

import torch
from torch import Tensor

# COCO category ids 1..90 without the 10 unused ones: row ``id`` of an original 91-class head is
# class ``COCO80_IDS.index(id)`` of mmdet's CocoDataset (classes in ascending id order).
COCO80_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]

# (pattern, replacement) on the full key; the first matching rule renames it; replacement None
# drops the key
Rule = Tuple[str, Union[None, str, Callable[[re.Match], str]]]

# torchvision's ResNet names (conv1, bn1, layerN.M.{conv,bn}K, downsample.{0,1}) are mmdet's
TORCHVISION_BACKBONE_RULES: Tuple[Rule, ...] = ((r'^backbone\.0\.body\.', 'backbone.'), )


def rename(state_dict: Dict[str, Tensor], rules: Sequence[Rule]) -> 'OrderedDict[str, Tensor]':
    """Applies the first matching rule to every key; raises KeyError on a key no rule matches."""
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


def add_batchnorm_counters(state_dict: Dict[str, Tensor], prefix: str = '') -> None:
    """The originals' frozen BatchNorms have no ``num_batches_tracked``; mmdet's BatchNorm does:
    a zero counter is added next to every ``running_var`` under ``prefix``."""
    for key in [k for k in state_dict if k.startswith(prefix) and k.endswith('.running_var')]:
        counter = key[:-len('running_var')] + 'num_batches_tracked'
        state_dict.setdefault(counter, torch.tensor(0, dtype=torch.long))


def select_rows(state_dict: Dict[str, Tensor], prefix: str, rows: Sequence[int]) -> None:
    """Keeps ``rows`` (in this order) of the weight and bias of the linear layer ``prefix``."""
    index = torch.as_tensor(rows, dtype=torch.long)
    for name in ('weight', 'bias'):
        key = f'{prefix}.{name}'
        state_dict[key] = state_dict[key].index_select(0, index).clone()
