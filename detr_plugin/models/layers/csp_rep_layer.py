"""Convolution blocks of RT-DETR's cross-scale fusion (CCFM): conv-BN-act, RepVGG, CSPRepLayer.

Parameter names (``conv``, ``norm``, ``conv1``...) follow the original implementation so that its
checkpoints map onto these modules key for key.
"""
from typing import Optional

from torch import Tensor, nn

_ACTIVATIONS = {'relu': nn.ReLU, 'silu': nn.SiLU, 'gelu': nn.GELU}


def build_activation(act: Optional[str]) -> nn.Module:
    """``'relu' | 'silu' | 'gelu'`` -> the module; ``None`` -> Identity."""
    if act is None:
        return nn.Identity()
    if act not in _ACTIVATIONS:
        raise ValueError(f'act must be None or one of {sorted(_ACTIVATIONS)}, got {act!r}')
    return _ACTIVATIONS[act]()


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias, 'same' padding for odd kernels) -> BatchNorm2d -> activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 act: Optional[str] = None, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                              padding=(kernel_size - 1) // 2, groups=groups, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = build_activation(act)


class RepVggBlock(nn.Module):
    """act(BN(conv3x3(x)) + BN(conv1x1(x))): RepVGG's training-time form, no identity branch."""

    def __init__(self, channels: int, act: str = 'silu') -> None:
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels, 3)
        self.conv2 = ConvNormAct(channels, channels, 1)
        self.act = build_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        """(bs, C, H, W) -> (bs, C, H, W)"""
        return self.act(self.conv1(x) + self.conv2(x))


class CSPRepLayer(nn.Module):
    """Cross-stage-partial block: two 1x1 branches of ``expansion * out_channels`` channels, one
    through ``num_blocks`` RepVGG blocks, summed, then a 1x1 conv to ``out_channels`` (identity when
    the hidden width already equals it).
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 3,
                 expansion: float = 1.0, act: str = 'silu') -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvNormAct(in_channels, hidden, 1, act=act)
        self.conv2 = ConvNormAct(in_channels, hidden, 1, act=act)
        self.bottlenecks = nn.Sequential(*(RepVggBlock(hidden, act) for _ in range(num_blocks)))
        self.conv3 = (ConvNormAct(hidden, out_channels, 1, act=act) if hidden != out_channels
                      else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        """(bs, in_channels, H, W) -> (bs, out_channels, H, W)"""
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))
