"""D-FINE's cross-scale fusion blocks: RepNCSPELAN4 (fusion) and SCDown (downsampling).

RepNCSPELAN4 is YOLOv9's CSP-ELAN block as D-FINE uses it: ELAN's chain of branches, each branch a
CSPRepLayer of RepVGG blocks followed by a 3x3 conv, all branch outputs concatenated. SCDown is
YOLOv10's spatial-channel decoupled downsampling: a 1x1 conv for the channels, then a stride-2
depthwise conv for the resolution. Parameter names (``cv1``...) follow the original so that its
checkpoints map onto these modules key for key.
"""
import torch
from torch import Tensor, nn

from .csp_rep_layer import ConvNormAct, CSPRepLayer


class RepNCSPELAN4(nn.Module):
    """1x1 conv to ``2 * out_channels`` channels, split into halves (a, b); then
    ``c = cv2(b)`` and ``d = cv3(c)``, each a CSPRepLayer of ``num_blocks`` RepVGG blocks and a 3x3
    conv, ``branch_channels`` wide; finally a 1x1 conv of ``[a, b, c, d]`` to ``out_channels``.

    ``branch_channels = int(expansion * out_channels // 2)``, the original's
    ``round(expansion * hidden_dim // 2)`` (a float's floor division: 21 for D-FINE N's 0.34 x 128).
    Every conv is conv-BN-``act``; the RepVGG blocks' branch convs have no activation of their own.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 3,
                 expansion: float = 1.0, act: str = 'silu') -> None:
        super().__init__()
        branch = int(expansion * out_channels // 2)
        if branch < 1:
            raise ValueError(f'RepNCSPELAN4: expansion {expansion} x out_channels {out_channels} '
                             f'// 2 leaves no branch channels')
        self.half = out_channels
        self.cv1 = ConvNormAct(in_channels, 2 * out_channels, 1, act=act)
        self.cv2 = nn.Sequential(CSPRepLayer(out_channels, branch, num_blocks, 1.0, act),
                                 ConvNormAct(branch, branch, 3, act=act))
        self.cv3 = nn.Sequential(CSPRepLayer(branch, branch, num_blocks, 1.0, act),
                                 ConvNormAct(branch, branch, 3, act=act))
        self.cv4 = ConvNormAct(2 * out_channels + 2 * branch, out_channels, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        """(bs, in_channels, H, W) -> (bs, out_channels, H, W)"""
        a, b = self.cv1(x).split(self.half, 1)
        c = self.cv2(b)
        d = self.cv3(c)
        return self.cv4(torch.cat([a, b, c, d], 1))


class SCDown(nn.Module):
    """conv1x1-BN to ``out_channels``, then a depthwise ``kernel_size`` conv-BN of ``stride``;
    no activation (as in D-FINE)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 2) -> None:
        super().__init__()
        self.cv1 = ConvNormAct(in_channels, out_channels, 1)
        self.cv2 = ConvNormAct(out_channels, out_channels, kernel_size, stride,
                               groups=out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """(bs, in_channels, H, W) -> (bs, out_channels, ceil(H / stride), ceil(W / stride)) for
        odd ``kernel_size``."""
        return self.cv2(self.cv1(x))
