"""mmengine's optimizer construction with one parameter group per distinct setting."""
from typing import Dict, List, Tuple

from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from detr_plugin.registry import OPTIM_WRAPPER_CONSTRUCTORS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class GroupedOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Like mmengine's default constructor (same ``paramwise_cfg``: ``custom_keys``,
    ``norm_decay_mult``, ``bias_decay_mult``...), but parameters with the same settings share one
    group.

    The default makes a group per parameter tensor whenever ``paramwise_cfg`` is set (hundreds
    for a DETR). PyTorch's multi-tensor (``foreach``) optimizer kernels work within a group, so
    each tensor then costs its own handful of kernel launches per step; with a few groups the
    update is a few launches for all of them, which matters where the step is launch-bound
    (small models and batches). The update itself is unchanged: every tensor keeps its own
    learning rate, weight decay and other options.
    """

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   is_dcn_module=None) -> None:
        if prefix:  # the recursion inside the default constructor
            return super().add_params(params, module, prefix, is_dcn_module)
        per_tensor: List[dict] = []
        super().add_params(per_tensor, module, prefix, is_dcn_module)
        params.extend(merge_param_groups(per_tensor))


def merge_param_groups(groups: List[dict]) -> List[dict]:
    """Groups with equal options (everything but ``params``) merged, in first-seen order."""
    merged: Dict[Tuple, dict] = {}
    for group in groups:
        options = {k: v for k, v in group.items() if k != 'params'}
        key = tuple(sorted((k, repr(v)) for k, v in options.items()))
        if key not in merged:
            merged[key] = dict(options, params=[])
        merged[key]['params'].extend(group['params'])
    return list(merged.values())
