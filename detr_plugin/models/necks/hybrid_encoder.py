"""RT-DETR's hybrid encoder (Zhao et al., CVPR 2024, Sec. 4.2): AIFI on the coarsest level + CCFM;
and D-FINE's (Peng et al., ICLR 2025), the same with other CCFM blocks.

AIFI (attention-based intra-scale feature interaction) is one transformer encoder layer over the
tokens of the stride-32 map only; CCFM (CNN-based cross-scale feature fusion) is a PAN: a top-down
pass (1x1 lateral conv, nearest upsampling, concat, fusion block) then a bottom-up pass
(downsampling conv, concat, fusion block). RT-DETR's fusion block is a CSPRepLayer and its
downsampling a 3x3 stride-2 conv; D-FINE (and DEIM, which trains the D-FINE models) fuses with
RepNCSPELAN4, downsamples with SCDown and has no activation after the lateral convs.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detr_plugin.registry import MODELS
from ..layers.csp_rep_layer import ConvNormAct, CSPRepLayer
from ..layers.multi_scale import ShapeCache
from ..layers.rep_ncsp_elan import RepNCSPELAN4, SCDown
from ..layers.transformer import DetrTransformerEncoder


def sincos_position_embedding(h: int, w: int, embed_dims: int, temperature: float = 10000.,
                              device=None) -> Tensor:
    """RT-DETR's fixed 2-D sin-cos embedding of an (h, w) map, (1, h * w, embed_dims) float32.

    Reproduces the original exactly, including its token order: it enumerates a ``w x h`` grid
    (u, v) u-major, so the k-th token of the row-major flattened map gets u = k // h, v = k % h.
    On the square maps RT-DETR runs on (640 x 640 inputs) u is the token's row and v its column.
    Channels are ``[sin(u w_i), cos(u w_i), sin(v w_i), cos(v w_i)]``, each over the
    ``embed_dims / 4`` frequencies ``w_i = temperature ** (-i / (embed_dims / 4))``.
    """
    if embed_dims % 4:
        raise ValueError(f'embed_dims must be divisible by 4 for the 2-D sin-cos embedding, '
                         f'got {embed_dims}')
    quarter = embed_dims // 4
    k = torch.arange(h * w, device=device)
    u = (k // h).to(torch.float32)[:, None]  # (h * w, 1)
    v = (k % h).to(torch.float32)[:, None]
    # 1 / t ** x as the original computes it: t ** -x rounds 20 of 64 frequencies differently
    omega = 1. / temperature ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter)
    angles_u, angles_v = u * omega, v * omega  # (h * w, quarter)
    return torch.cat([angles_u.sin(), angles_u.cos(), angles_v.sin(), angles_v.cos()], 1)[None]


class SinCosEmbeddings(ShapeCache):
    """:func:`sincos_position_embedding` per (h, w, dtype, device) (:class:`ShapeCache`: made
    once per map size; multi-scale training's sizes stay cached).

    Args:
        embed_dims / temperature: as in :func:`sincos_position_embedding`.
        size: how many embeddings to keep; the least recently used one is dropped first.
    """

    def __init__(self, embed_dims: int, temperature: float = 10000., size: int = 16) -> None:
        super().__init__(size)
        self.embed_dims = embed_dims
        self.temperature = temperature

    def forward(self, h: int, w: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The (1, h * w, embed_dims) embedding in ``dtype`` (computed in float32, then cast) on
        ``device``."""
        return self.cached((h, w, dtype, device), lambda: sincos_position_embedding(
            h, w, self.embed_dims, self.temperature, device).to(dtype))


@MODELS.register_module()
class HybridEncoder(nn.Module):
    """Projects backbone levels to ``embed_dims``, applies AIFI, then fuses scales with CCFM.

    Args:
        in_channels: channels of the backbone levels, finest first (e.g. strides 8, 16, 32).
        embed_dims: width of every output level.
        num_heads / ffn_dims / dropout / enc_act: the AIFI transformer layer.
        encoder_levels: indices of the levels AIFI runs on (RT-DETR: the coarsest only).
        num_encoder_layers: AIFI layers per such level.
        pe_temperature: temperature of the sin-cos position embedding.
        expansion: hidden width of the CSPRepLayers relative to ``embed_dims``.
        depth_mult: each CSPRepLayer has ``round(3 * depth_mult)`` RepVGG blocks.
        act: activation of the CCFM convolutions.
    """

    def __init__(self,
                 in_channels: Sequence[int] = (512, 1024, 2048),
                 embed_dims: int = 256,
                 num_heads: int = 8,
                 ffn_dims: int = 1024,
                 dropout: float = 0.0,
                 enc_act: str = 'gelu',
                 encoder_levels: Sequence[int] = (2, ),
                 num_encoder_layers: int = 1,
                 pe_temperature: float = 10000.,
                 expansion: float = 1.0,
                 depth_mult: float = 1.0,
                 act: str = 'silu') -> None:
        super().__init__()
        num_levels = len(in_channels)
        if num_levels < 2:
            raise ValueError(f'in_channels must name at least 2 levels, got {list(in_channels)}')
        if any(not 0 <= i < num_levels for i in encoder_levels):
            raise ValueError(f'encoder_levels {list(encoder_levels)} must index the '
                             f'{num_levels} levels of in_channels')
        self.in_channels = list(in_channels)
        self.embed_dims = embed_dims
        self.encoder_levels = list(encoder_levels)
        self.position_embeddings = SinCosEmbeddings(embed_dims, pe_temperature)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, embed_dims, 1, bias=False), nn.BatchNorm2d(embed_dims))
            for c in in_channels)
        layer_cfg = dict(embed_dims=embed_dims, num_heads=num_heads, ffn_dims=ffn_dims,
                         dropout=dropout, act=enc_act)
        self.encoder = nn.ModuleList(DetrTransformerEncoder(num_encoder_layers, layer_cfg)
                                     for _ in encoder_levels)
        num_blocks = round(3 * depth_mult)
        # top-down: index i fuses level (num_levels - 1 - i) into level (num_levels - 2 - i)
        self.lateral_convs = nn.ModuleList(
            self.lateral_conv(embed_dims, act) for _ in range(num_levels - 1))
        self.fpn_blocks = nn.ModuleList(
            self.fusion_block(embed_dims, num_blocks, expansion, act)
            for _ in range(num_levels - 1))
        # bottom-up: index i fuses level i into level i + 1
        self.downsample_convs = nn.ModuleList(
            self.downsample_conv(embed_dims, act) for _ in range(num_levels - 1))
        self.pan_blocks = nn.ModuleList(
            self.fusion_block(embed_dims, num_blocks, expansion, act)
            for _ in range(num_levels - 1))

    # CCFM's parts, RT-DETR's; a subclass swaps them (DFineHybridEncoder)
    @staticmethod
    def lateral_conv(embed_dims: int, act: str) -> nn.Module:
        """1x1 conv of the coarser map before it is upsampled."""
        return ConvNormAct(embed_dims, embed_dims, 1, act=act)

    @staticmethod
    def fusion_block(embed_dims: int, num_blocks: int, expansion: float, act: str) -> nn.Module:
        """(bs, 2 * embed_dims, H, W) concatenated pair -> (bs, embed_dims, H, W)."""
        return CSPRepLayer(2 * embed_dims, embed_dims, num_blocks, expansion, act)

    @staticmethod
    def downsample_conv(embed_dims: int, act: str) -> nn.Module:
        """(bs, embed_dims, H, W) -> (bs, embed_dims, ceil(H / 2), ceil(W / 2))."""
        return ConvNormAct(embed_dims, embed_dims, 3, stride=2, act=act)

    def forward(self, feats: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """feats: backbone levels (bs, in_channels[l], H_l, W_l), finest first, each level half the
        size of the previous one. Returns as many levels (bs, embed_dims, H_l, W_l)."""
        if len(feats) != len(self.in_channels):
            raise ValueError(f'expected {len(self.in_channels)} feature levels, got {len(feats)}')
        proj = [proj(feat) for proj, feat in zip(self.input_proj, feats)]
        for encoder, level in zip(self.encoder, self.encoder_levels):
            proj[level] = self.intra_scale_interaction(encoder, proj[level])
        return self.cross_scale_fusion(proj)

    def intra_scale_interaction(self, encoder: nn.Module, feat: Tensor) -> Tensor:
        """AIFI: self-attention among the tokens of one level. (bs, C, H, W) -> (bs, C, H, W)."""
        bs, c, h, w = feat.shape
        tokens = feat.flatten(2).transpose(1, 2)  # (bs, H * W, C)
        pos = self.position_embeddings(h, w, tokens.dtype, feat.device)
        tokens = encoder(tokens, pos, None)
        layout = (torch.channels_last if feat.is_contiguous(memory_format=torch.channels_last)
                  else torch.contiguous_format)  # the level's own layout (a channels-last model)
        return tokens.transpose(1, 2).reshape(bs, c, h, w).contiguous(memory_format=layout)

    def cross_scale_fusion(self, feats: List[Tensor]) -> Tuple[Tensor, ...]:
        """CCFM over the projected levels (finest first); returns the fused levels, finest first."""
        num_levels = len(feats)
        # top-down: the coarse map, after its lateral conv, is upsampled into the next finer one
        inner = [feats[-1]]  # coarse to fine
        for i in range(num_levels - 1):
            high = self.lateral_convs[i](inner[-1])
            inner[-1] = high
            low = feats[num_levels - 2 - i]
            up = F.interpolate(high, size=low.shape[-2:], mode='nearest')
            inner.append(self.fpn_blocks[i](torch.cat([up, low], 1)))
        inner = inner[::-1]  # fine to coarse
        # bottom-up: each output is downsampled into the next coarser level
        outs = [inner[0]]
        for i in range(num_levels - 1):
            down = self.downsample_convs[i](outs[-1])
            outs.append(self.pan_blocks[i](torch.cat([down, inner[i + 1]], 1)))
        return tuple(outs)


@MODELS.register_module()
class DFineHybridEncoder(HybridEncoder):
    """D-FINE's hybrid encoder (also DEIM's for its D-FINE models): RT-DETR's AIFI and CCFM with
    RepNCSPELAN4 fusion blocks, SCDown downsampling and lateral convs without activation.

    Arguments as :class:`HybridEncoder`'s (the original's names: ``hidden_dim`` -> ``embed_dims``,
    ``nhead`` -> ``num_heads``, ``dim_feedforward`` -> ``ffn_dims``, ``use_encoder_idx`` ->
    ``encoder_levels``), except that ``expansion`` sets the width of RepNCSPELAN4's two inner
    branches, ``int(expansion * embed_dims // 2)``, and ``act`` is that of the fusion blocks only.
    """

    @staticmethod
    def lateral_conv(embed_dims: int, act: str) -> nn.Module:
        return ConvNormAct(embed_dims, embed_dims, 1)

    @staticmethod
    def fusion_block(embed_dims: int, num_blocks: int, expansion: float, act: str) -> nn.Module:
        return RepNCSPELAN4(2 * embed_dims, embed_dims, num_blocks, expansion, act)

    @staticmethod
    def downsample_conv(embed_dims: int, act: str) -> nn.Module:
        return SCDown(embed_dims, embed_dims, 3, stride=2)
