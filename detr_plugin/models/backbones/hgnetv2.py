"""HGNetv2, the backbone of D-FINE and DEIM (PP-HGNetV2 of PaddleClas, as Peterande/D-FINE's
``src/nn/backbone/hgnetv2.py`` builds it).

    image (bs, 3, H, W)
      stem      stride 4: 3x3/2 conv, then a 2x2-conv branch and a 2x2 max-pool side by side,
                concatenated, 3x3/2 conv, 1x1 conv
      stage 0   stride 4   (no downsampling)
      stage 1   stride 8   each stage: depthwise 3x3/2 conv (stages 1-3), then HG blocks
      stage 2   stride 16
      stage 3   stride 32

An HG block runs ``num_layers`` convolutions in a chain (3x3, or "light": 1x1 then depthwise
k x k), concatenates its input with every intermediate output, and aggregates them with two 1x1
convolutions (squeeze to out/2 channels, excitation to out). Every block after a stage's first
adds its input back. With ``use_lab`` every activated convolution ends in a learnable affine
``scale * x + bias`` (two scalars).

The original's HG block also offers an ESE attention aggregation, but its HGNetv2 never builds it
(its stages always take the two-convolution aggregation, which it calls 'se'): it is left out.
"""
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from torch import Tensor, nn

from detr_plugin.registry import MODELS


class StageSpec(NamedTuple):
    in_channels: int
    mid_channels: int  # width of the block's chained convolutions
    out_channels: int
    num_blocks: int
    downsample: bool  # a depthwise 3x3 stride-2 conv before the blocks
    light: bool  # light blocks: 1x1 conv then depthwise k x k conv
    kernel_size: int
    num_layers: int  # chained convolutions per block


class ArchSpec(NamedTuple):
    stem_channels: Tuple[int, int, int]  # (in, mid, out)
    stages: Tuple[StageSpec, StageSpec, StageSpec, StageSpec]


def _arch(stem, *stages) -> ArchSpec:
    return ArchSpec(stem, tuple(StageSpec(*s) for s in stages))


# the original's arch_configs; stage rows: in, mid, out, blocks, downsample, light, kernel, layers
ARCHS: Dict[str, ArchSpec] = {
    'B0': _arch((3, 16, 16), (16, 16, 64, 1, False, False, 3, 3),
                (64, 32, 256, 1, True, False, 3, 3), (256, 64, 512, 2, True, True, 5, 3),
                (512, 128, 1024, 1, True, True, 5, 3)),
    'B1': _arch((3, 24, 32), (32, 32, 64, 1, False, False, 3, 3),
                (64, 48, 256, 1, True, False, 3, 3), (256, 96, 512, 2, True, True, 5, 3),
                (512, 192, 1024, 1, True, True, 5, 3)),
    'B2': _arch((3, 24, 32), (32, 32, 96, 1, False, False, 3, 4),
                (96, 64, 384, 1, True, False, 3, 4), (384, 128, 768, 3, True, True, 5, 4),
                (768, 256, 1536, 1, True, True, 5, 4)),
    'B3': _arch((3, 24, 32), (32, 32, 128, 1, False, False, 3, 5),
                (128, 64, 512, 1, True, False, 3, 5), (512, 128, 1024, 3, True, True, 5, 5),
                (1024, 256, 2048, 1, True, True, 5, 5)),
    'B4': _arch((3, 32, 48), (48, 48, 128, 1, False, False, 3, 6),
                (128, 96, 512, 1, True, False, 3, 6), (512, 192, 1024, 3, True, True, 5, 6),
                (1024, 384, 2048, 1, True, True, 5, 6)),
    'B5': _arch((3, 32, 64), (64, 64, 128, 1, False, False, 3, 6),
                (128, 128, 512, 2, True, False, 3, 6), (512, 256, 1024, 5, True, True, 5, 6),
                (1024, 512, 2048, 2, True, True, 5, 6)),
    'B6': _arch((3, 48, 96), (96, 96, 192, 2, False, False, 3, 6),
                (192, 192, 512, 3, True, False, 3, 6), (512, 384, 1024, 6, True, True, 5, 6),
                (1024, 768, 2048, 3, True, True, 5, 6)),
}
STRIDES = (4, 8, 16, 32)


class LearnableAffine(nn.Module):
    """``scale * x + bias`` with two learned scalars (PP-HGNetV2's "LAB"), shape-preserving."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x + self.bias


class ConvNormAct(nn.Module):
    """conv (no bias, padding (k - 1) // 2) -> norm -> [ReLU -> [LearnableAffine]].

    (bs, C_in, H, W) -> (bs, C_out, H / stride, W / stride) (rounded up for odd kernels; a 2x2
    kernel gets no padding and loses one row and column)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm_cfg: dict,
                 stride: int = 1, groups: int = 1, act: bool = True,
                 use_lab: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                              padding=(kernel_size - 1) // 2, groups=groups, bias=False)
        self.bn = build_norm_layer(norm_cfg, out_channels)[1]
        self.act = nn.ReLU() if act else nn.Identity()
        self.lab = LearnableAffine() if act and use_lab else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.lab(self.act(self.bn(self.conv(x))))


class LightConvNormAct(nn.Module):
    """Pointwise 1x1 conv + norm (no activation), then depthwise k x k conv + norm + ReLU.

    (bs, C_in, H, W) -> (bs, C_out, H, W)"""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm_cfg: dict,
                 use_lab: bool = False) -> None:
        super().__init__()
        self.pointwise = ConvNormAct(in_channels, out_channels, 1, norm_cfg, act=False)
        self.depthwise = ConvNormAct(out_channels, out_channels, kernel_size, norm_cfg,
                                     groups=out_channels, use_lab=use_lab)

    def forward(self, x: Tensor) -> Tensor:
        return self.depthwise(self.pointwise(x))


class StemBlock(nn.Module):
    """(bs, 3, H, W) -> (bs, C_out, ceil(H / 4), ceil(W / 4)) for even H and W.

    After the first stride-2 conv, a 2x2-conv branch (two 2x2 convs, each after a one-pixel
    bottom/right zero pad) and a 2x2 stride-1 max-pool over the same padded map keep the
    resolution; their concatenation goes through a 3x3 stride-2 conv and a 1x1 conv."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, norm_cfg: dict,
                 use_lab: bool = False) -> None:
        super().__init__()
        half = mid_channels // 2
        self.stem1 = ConvNormAct(in_channels, mid_channels, 3, norm_cfg, 2, use_lab=use_lab)
        self.stem2a = ConvNormAct(mid_channels, half, 2, norm_cfg, use_lab=use_lab)
        self.stem2b = ConvNormAct(half, mid_channels, 2, norm_cfg, use_lab=use_lab)
        self.stem3 = ConvNormAct(2 * mid_channels, mid_channels, 3, norm_cfg, 2, use_lab=use_lab)
        self.stem4 = ConvNormAct(mid_channels, out_channels, 1, norm_cfg, use_lab=use_lab)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=1, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(self.stem1(x), (0, 1, 0, 1))  # (bs, mid, H/2 + 1, W/2 + 1)
        branch = self.stem2b(F.pad(self.stem2a(x), (0, 1, 0, 1)))  # (bs, mid, H/2, W/2)
        x = torch.cat([self.pool(x), branch], dim=1)  # (bs, 2 mid, H/2, W/2)
        return self.stem4(self.stem3(x))


class HGBlock(nn.Module):
    """(bs, C_in, H, W) -> (bs, C_out, H, W); ``residual`` needs C_in == C_out."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, num_layers: int,
                 kernel_size: int, light: bool, residual: bool, norm_cfg: dict,
                 use_lab: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.ModuleList()
        for i in range(num_layers):
            c_in = in_channels if i == 0 else mid_channels
            if light:
                layer = LightConvNormAct(c_in, mid_channels, kernel_size, norm_cfg, use_lab)
            else:
                layer = ConvNormAct(c_in, mid_channels, kernel_size, norm_cfg, use_lab=use_lab)
            self.layers.append(layer)
        total = in_channels + num_layers * mid_channels
        self.aggregation = nn.Sequential(OrderedDict(
            squeeze=ConvNormAct(total, out_channels // 2, 1, norm_cfg, use_lab=use_lab),
            excitation=ConvNormAct(out_channels // 2, out_channels, 1, norm_cfg,
                                   use_lab=use_lab)))

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features[-1]))
        out = self.aggregation(torch.cat(features, dim=1))  # from (bs, C_in + L * C_mid, H, W)
        return out + x if self.residual else out


class HGStage(nn.Module):
    """(bs, C_in, H, W) -> (bs, C_out, H', W'), H' = ceil(H / 2) when ``spec.downsample``."""

    def __init__(self, spec: StageSpec, norm_cfg: dict, use_lab: bool = False) -> None:
        super().__init__()
        c_in = spec.in_channels
        # no activation, so never a learnable affine
        self.downsample = (ConvNormAct(c_in, c_in, 3, norm_cfg, 2, groups=c_in, act=False)
                           if spec.downsample else nn.Identity())
        self.blocks = nn.Sequential(*(
            HGBlock(c_in if i == 0 else spec.out_channels, spec.mid_channels, spec.out_channels,
                    spec.num_layers, spec.kernel_size, spec.light, residual=i > 0,
                    norm_cfg=norm_cfg, use_lab=use_lab) for i in range(spec.num_blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


@MODELS.register_module()
class HGNetv2(BaseModule):
    """HGNetv2 (PP-HGNetV2) by preset name.

    Args:
        arch: 'B0' ... 'B6' (D-FINE/DEIM N and S use B0, M B2, L B4, X B5).
        out_indices: stages whose outputs are returned, of 0-3 (strides 4, 8, 16, 32); the
            original's ``return_idx``.
        use_lab: learnable affine after every activation (the original's N, S and M configs).
        frozen_stages: -1 freezes nothing, 0 the stem, k >= 1 the stem and stages 0..k-1: no
            gradients, and kept in eval mode by ``train()`` (the original only stops their
            gradients; its configs freeze stages only with frozen norms). ``freeze_at=-1`` is
            -1 (D-FINE N/S/M, every DEIM model); ``freeze_at=0, freeze_stem_only=True`` (D-FINE
            L/X) is 0; ``freeze_at=k, freeze_stem_only=False`` is k + 1.
        norm_cfg: every norm layer; ``dict(type='FrozenBatchNorm2d')`` is the original's
            ``freeze_norm=True`` (D-FINE L/X), ``dict(type='BN')`` its ``freeze_norm=False``
            (D-FINE N/S/M, every DEIM model).
        init_cfg: e.g. ``dict(type='Pretrained', checkpoint='hgnetv2://B4')`` for the authors'
            ImageNet weights (detr_plugin/converters/hgnetv2.py).
    """

    def __init__(self, arch: str, out_indices: Sequence[int] = (1, 2, 3), use_lab: bool = False,
                 frozen_stages: int = -1, norm_cfg: dict = dict(type='BN'),
                 init_cfg=None) -> None:
        super().__init__(init_cfg)
        if arch not in ARCHS:
            raise ValueError(f'HGNetv2: unknown arch {arch!r}; one of {sorted(ARCHS)}')
        if not out_indices or not set(out_indices) <= {0, 1, 2, 3}:
            raise ValueError(f'HGNetv2: out_indices {list(out_indices)} must be some of 0-3')
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f'HGNetv2: frozen_stages {frozen_stages} must be in -1..4')
        spec = ARCHS[arch]
        self.out_indices = tuple(sorted(out_indices))
        self.frozen_stages = frozen_stages
        self.stem = StemBlock(*spec.stem_channels, norm_cfg=norm_cfg, use_lab=use_lab)
        self.stages = nn.ModuleList(HGStage(s, norm_cfg, use_lab) for s in spec.stages)
        self.out_channels: List[int] = [spec.stages[i].out_channels for i in self.out_indices]
        self.strides: List[int] = [STRIDES[i] for i in self.out_indices]
        for module in self._frozen_modules():
            module.requires_grad_(False)

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.stem, *self.stages[:self.frozen_stages]]

    def train(self, mode: bool = True) -> 'HGNetv2':
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """(bs, 3, H, W) -> one (bs, out_channels[i], H / strides[i], W / strides[i]) map per
        entry of ``out_indices`` (sizes rounded up)."""
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
