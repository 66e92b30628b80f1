"""2-D positional encodings of a feature map, computed from its padding mask (DETR, Sec. A.4)."""
import math

import torch
from torch import Tensor, nn

from detr_plugin.registry import MODELS


@MODELS.register_module()
class SinePositionalEncoding(nn.Module):
    """Fixed sine/cosine encoding of the (y, x) position of every unpadded pixel.

    Positions are the cumulative count of valid pixels along each axis, so padding does not shift
    them; with ``normalize`` they are divided by the valid extent of each image and scaled to
    ``[0, scale]``. ``offset`` is added before the division (0 in DETR, -0.5 in Deformable DETR,
    which puts positions at pixel centres). Output channels are ``[y features, x features]``, each
    half interleaving sin and cos of ``pos / temperature ** (2 * (i // 2) / num_feats)``.

    Args:
        num_feats: features per axis; the output has ``2 * num_feats`` channels.
        temperature: base of the frequency ladder.
        normalize: divide positions by the valid extent of each image.
        scale: range of normalized positions.
        eps: guards the division for fully padded rows/columns.
        offset: added to the cumulative positions before normalizing.
    """

    def __init__(self, num_feats: int = 128, temperature: float = 10000., normalize: bool = True,
                 scale: float = 2 * math.pi, eps: float = 1e-6, offset: float = 0.) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.eps = eps
        self.offset = offset

    def forward(self, mask: Tensor) -> Tensor:
        """mask: (bs, h, w) bool, True on padding. Returns (bs, 2 * num_feats, h, w) float32."""
        if mask.dim() != 3:
            raise ValueError(f'mask must be (bs, h, w), got shape {tuple(mask.shape)}')
        not_mask = (~mask).to(torch.float32)
        y = not_mask.cumsum(1)
        x = not_mask.cumsum(2)
        if self.normalize:
            y = (y + self.offset) / (y[:, -1:, :] + self.eps) * self.scale
            x = (x + self.offset) / (x[:, :, -1:] + self.eps) * self.scale
        dim_t = torch.arange(self.num_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_feats)
        pos_y = self._interleave_sin_cos(y[..., None] / dim_t)
        pos_x = self._interleave_sin_cos(x[..., None] / dim_t)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    @staticmethod
    def _interleave_sin_cos(angles: Tensor) -> Tensor:
        # (bs, h, w, num_feats) -> sin on even features, cos on odd ones, in place order
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=4).flatten(3)

    def extra_repr(self) -> str:
        return (f'num_feats={self.num_feats}, temperature={self.temperature}, '
                f'normalize={self.normalize}, scale={self.scale}, offset={self.offset}')


@MODELS.register_module()
class LearnedPositionalEncoding(nn.Module):
    """Learned row and column embeddings (DETR's ``position_embedding='learned'`` option).

    Output channels are ``[x (column) features, y (row) features]``, as in the original code;
    maps up to ``row_num_embed x col_num_embed`` are supported.
    """

    def __init__(self, num_feats: int = 128, row_num_embed: int = 50, col_num_embed: int = 50) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.row_embed = nn.Embedding(row_num_embed, num_feats)
        self.col_embed = nn.Embedding(col_num_embed, num_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: Tensor) -> Tensor:
        """mask: (bs, h, w) bool (only its shape is used). Returns (bs, 2 * num_feats, h, w)."""
        bs, h, w = mask.shape
        if h > self.row_embed.num_embeddings or w > self.col_embed.num_embeddings:
            raise ValueError(f'feature map {h}x{w} exceeds the learned table '
                             f'{self.row_embed.num_embeddings}x{self.col_embed.num_embeddings}')
        x_emb = self.col_embed(torch.arange(w, device=mask.device))  # (w, num_feats)
        y_emb = self.row_embed(torch.arange(h, device=mask.device))  # (h, num_feats)
        pos = torch.cat((x_emb[None].expand(h, w, -1), y_emb[:, None].expand(h, w, -1)), dim=-1)
        return pos.permute(2, 0, 1)[None].expand(bs, -1, -1, -1)
