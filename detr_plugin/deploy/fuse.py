"""Inference-time re-parameterisation: fewer, larger convolutions with the same outputs."""
import torch
from torch import nn

from ..models.layers.csp_rep_layer import RepVggBlock
from ..models.layers.frozen_batch_norm import FrozenBatchNorm2d

_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


@torch.no_grad()
def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Folds each BatchNorm into the convolution it follows and each RepVGG block's 3x3 and 1x1
    branches into one 3x3 convolution (RepVGG's deploy form), in place; returns ``model``.

    Only for inference: the BatchNorm statistics become constants. Outputs equal the unfused
    model's up to float rounding.
    """
    model.eval()
    _fold_batch_norms(model)
    _merge_repvgg_blocks(model)
    return model


def _fold_batch_norms(module: nn.Module) -> None:
    """A norm registered right after a Conv2d among the same parent's children is applied to that
    conv's output (the convention of mmcv/mmdet's ResNet and of our conv blocks)."""
    last_conv_name = None
    for name, child in list(module.named_children()):
        if isinstance(child, _NORMS) and last_conv_name is not None:
            conv = module._modules[last_conv_name]
            module._modules[last_conv_name] = _folded(conv, child)
            module._modules[name] = nn.Identity()
            last_conv_name = None
        elif isinstance(child, nn.Conv2d):
            last_conv_name = name
        else:
            last_conv_name = None
            _fold_batch_norms(child)


def _folded(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """conv followed by an eval-mode norm -> one conv with bias."""
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()  # (C_out,)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True,
                      padding_mode=conv.padding_mode).to(conv.weight)
    fused.weight.copy_(conv.weight * scale[:, None, None, None])
    fused.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
    return fused


def _merge_repvgg_blocks(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, RepVggBlock):
            module._modules[name] = nn.Sequential(_merged(child), child.act)
        else:
            _merge_repvgg_blocks(child)


def _merged(block: RepVggBlock) -> nn.Conv2d:
    """act(conv3x3(x) + conv1x1(x)) with folded norms -> act(conv3x3'(x)): the 1x1 kernel is the
    centre tap of a 3x3 kernel."""
    conv3, conv1 = block.conv1.conv, block.conv2.conv
    for conv in (conv3, conv1):
        if conv.bias is None:
            raise RuntimeError('fold the BatchNorms of a RepVggBlock before merging its branches')
    merged = nn.Conv2d(conv3.in_channels, conv3.out_channels, 3, padding=1, bias=True).to(conv3.weight)
    merged.weight.copy_(conv3.weight + nn.functional.pad(conv1.weight, [1, 1, 1, 1]))
    merged.bias.copy_(conv3.bias + conv1.bias)
    return merged
