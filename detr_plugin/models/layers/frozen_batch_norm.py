"""BatchNorm with fixed statistics and affine parameters, as DETR-family backbones freeze it."""
import torch
from torch import Tensor, nn

from detr_plugin.registry import MODELS


@MODELS.register_module()
class FrozenBatchNorm2d(nn.Module):
    """``y = x * scale + shift`` with ``scale = weight / sqrt(running_var + eps)`` and
    ``shift = bias - running_mean * scale``, in training as at inference; nothing is trained.

    This is the arithmetic of the original RT-DETR (and DETR) frozen BatchNorm. It equals
    ``F.batch_norm`` in eval mode mathematically but not in float32 rounding: where a channel's
    mean is large against its spread, ``x * scale`` and ``running_mean * scale`` nearly cancel, and
    the two orders of operations differ by ~1e-5 relative, which deep backbones amplify. Computing
    it the original's way keeps converted checkpoints' outputs equal to the original's.

    Unlike mmdet's ``FrozenBN`` it is not a ``_BatchNorm``, so ``sync_bn`` conversion leaves it
    frozen. Checkpoints with a ``num_batches_tracked`` entry (mmdet's BatchNorm layout) load.
    Build it with ``norm_cfg=dict(type='FrozenBatchNorm2d')``.
    """
    _abbr_ = 'bn'  # mmcv's build_norm_layer names the layers bn1, bn2...

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer('weight', torch.ones(num_features))
        self.register_buffer('bias', torch.zeros(num_features))
        self.register_buffer('running_mean', torch.zeros(num_features))
        self.register_buffer('running_var', torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        """(bs, C, H, W) -> (bs, C, H, W)"""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[:, None, None].to(x.dtype) + shift[:, None, None].to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + 'num_batches_tracked', None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f'{self.num_features}, eps={self.eps}'
