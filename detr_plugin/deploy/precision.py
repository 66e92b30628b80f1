"""Inference under autocast without the per-call weight casts."""
import torch
from torch import nn

from ..models.layers.multihead_attention import MultiheadAttention

# modules whose parameters autocast hands to low-precision ops only (convolution, linear,
# attention projections), so storing them in that precision changes no output
_CAST_BY_AUTOCAST = (nn.Conv2d, nn.Linear, MultiheadAttention)


@torch.no_grad()
def store_weights_for_autocast(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Stores the parameters of convolutions, linear layers and attention projections in
    ``dtype`` (bfloat16 / float16), in place; returns ``model``.

    Under ``torch.autocast(dtype=dtype)`` these ops cast their float32 parameters to ``dtype`` at
    every call: one copy kernel per parameter per forward, a sixth of the kernel time of a
    batch-1 RT-DETR R18 CUDA graph on an H200 (docs/benchmarks.md). Stored in ``dtype`` they
    are used as they are, and the outputs are bitwise those of the float32 model under the same
    autocast. Norms, embeddings and buffers stay float32, as autocast computes norms in float32.
    Only for inference under autocast: outside it, float32 inputs would meet ``dtype`` weights.
    """
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f'store_weights_for_autocast: dtype must be torch.bfloat16 or '
                         f'torch.float16, got {dtype}')
    for module in model.modules():
        if isinstance(module, _CAST_BY_AUTOCAST):
            module.to(dtype)
    return model
