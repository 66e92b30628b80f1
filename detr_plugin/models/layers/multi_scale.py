"""Multi-scale plumbing shared by every family: flattened levels, pixel grids, anchors.

The feature levels of a batch are flattened into one token sequence, finest level first;
:class:`MultiScaleLevels` carries what deformable attention needs to read it back (shapes, start
offsets, padding, and the fraction of every level that holds the image). Pixel-centre grids give
the encoder's reference points (Deformable DETR), the two-stage proposals (Deformable DETR) and
the query-selection anchors (RT-DETR): one box per token, centred on its pixel, of side
``base_size * 2 ** level``.
"""
from collections import OrderedDict
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

Shapes = Tuple[Tuple[int, int], ...]


class MultiScaleLevels(NamedTuple):
    """Layout of the flattened feature levels of a batch (L levels, N = sum(H_l * W_l) tokens).

    The level sizes are kept on the host too, so that nothing at inference reads them back from
    the device (no synchronisation: the model can be captured in a CUDA graph).
    """
    shapes: Shapes                  # (H_l, W_l) of every level, on the host
    spatial_shapes: Tensor          # (L, 2) long, the same on the device
    level_start_index: Tensor       # (L,) long, first token of every level
    valid_ratios: Tensor            # (bs, L, 2) as (w, h): valid width / W_l, valid height / H_l
    padding_mask: Optional[Tensor]  # (bs, N) True on padding; None when no image is padded

    @classmethod
    def from_shapes(cls, shapes: Sequence[Tuple[int, int]], valid_ratios: Tensor,
                    index: 'LevelIndex', padding_mask: Optional[Tensor] = None
                    ) -> 'MultiScaleLevels':
        """The layout of levels of the given (H_l, W_l), index tensors from ``index`` on the
        ratios' device."""
        shapes = tuple((int(h), int(w)) for h, w in shapes)
        spatial_shapes, level_start_index = index(shapes, valid_ratios.device)
        return cls(shapes, spatial_shapes, level_start_index, valid_ratios, padding_mask)

    def level_sizes(self) -> Tensor:
        """(L, 2) as (W_l, H_l), float, on the device."""
        return self.spatial_shapes.flip(-1).to(self.valid_ratios)


class ShapeCache(nn.Module):
    """Tensors that depend only on input sizes (and dtype, device), kept for the last ``size``
    keys asked for (multi-scale training's sizes stay cached).

    Made once per key, so that a model asking on every forward launches nothing for them and
    copies nothing host -> device after the first call (inference stays free of host
    synchronisation, capturable in a CUDA graph). Made outside inference mode, so that training
    can reuse what inference made. Plain attributes, not buffers: never saved, moved by ``.to()``
    or broadcast by DDP.

    Args:
        size: how many keys to keep; the least recently used one is dropped first.
    """

    def __init__(self, size: int = 16) -> None:
        super().__init__()
        self.size = size
        self.tensors: OrderedDict = OrderedDict()  # key -> value, least recently used first

    def cached(self, key: tuple, make: Callable[[], Any]) -> Any:
        """The value kept for ``key``, made by ``make()`` the first time. Shared tensors: not to
        be modified in place."""
        if key in self.tensors:
            self.tensors.move_to_end(key)
            return self.tensors[key]
        with torch.inference_mode(False):
            self.tensors[key] = make()
        if len(self.tensors) > self.size:
            self.tensors.popitem(last=False)
        return self.tensors[key]


class LevelIndex(ShapeCache):
    """The index tensors of flattened levels, per layout and device (:class:`ShapeCache`)."""

    def forward(self, shapes: Shapes, device: torch.device) -> Tuple[Tensor, Tensor]:
        """((H_0, W_0), (H_1, W_1), ...) -> spatial_shapes (L, 2) and level_start_index (L,),
        long, on ``device``."""
        return self.cached((shapes, device), lambda: level_index(shapes, device))


def level_index(shapes: Shapes, device: torch.device) -> Tuple[Tensor, Tensor]:
    """spatial_shapes (L, 2) and level_start_index (L,) of levels of the given sizes."""
    spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=device).reshape(-1, 2)
    sizes = spatial_shapes.prod(1)
    return spatial_shapes, torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def flatten_levels(feats: Sequence[Tensor], index: LevelIndex,
                   valid_ratios: Optional[Tensor] = None,
                   padding_masks: Optional[Sequence[Tensor]] = None
                   ) -> Tuple[Tensor, MultiScaleLevels]:
    """Concatenates the tokens of every level.

    Args:
        feats: L maps (bs, C, H_l, W_l), finest first.
        index: the caller's cache of index tensors.
        valid_ratios: (bs, L, 2) as (w, h); None: no padding (all ones).
        padding_masks: L masks (bs, H_l, W_l) True on padding, or None (no padding).

    Returns:
        Tokens (bs, N, C) and their layout.
    """
    bs = feats[0].shape[0]
    if valid_ratios is None:
        valid_ratios = torch.ones(bs, len(feats), 2, device=feats[0].device)
    mask = None if padding_masks is None else torch.cat([m.flatten(1) for m in padding_masks], 1)
    levels = MultiScaleLevels.from_shapes([f.shape[-2:] for f in feats], valid_ratios, index,
                                          mask)
    return torch.cat([f.flatten(2).transpose(1, 2) for f in feats], 1), levels


def valid_ratios(mask: Optional[Tensor], batch_size: int, device: torch.device) -> Tensor:
    """(bs, 2) as (w_ratio, h_ratio): the fractions of the width and height that hold the image.

    mask: (bs, H, W) True on padding, or None (no padding: ratios 1). Images are padded at the
    bottom and right, so the first column and row count the valid rows and columns.
    """
    if mask is None:
        return torch.ones(batch_size, 2, device=device)
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float()
    valid_w = (~mask[:, 0, :]).sum(1).float()
    return torch.stack([valid_w / w, valid_h / h], -1)


def pixel_centres(shapes: Sequence[Tuple[int, int]], sizes: Tensor) -> Tensor:
    """The centre of every pixel of every level, divided by a size per level.

    Args:
        shapes: (H_l, W_l) of every level.
        sizes: (bs or 1, L, 2) as (width, height) that level l's pixel coordinates are divided
            by: (W_l, H_l) normalizes to the padded map, the valid size to the image.

    Returns:
        (bs or 1, N, 2) as (x, y): pixel (i, j) of level l gives
        ``((j + 0.5) / width_l, (i + 0.5) / height_l)``.
    """
    centres = []
    for level, (h, w) in enumerate(shapes):
        y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=sizes.device) + 0.5,
                              torch.arange(w, dtype=torch.float32, device=sizes.device) + 0.5,
                              indexing='ij')
        centres.append(torch.stack((x, y), -1).reshape(1, h * w, 2) / sizes[:, None, level])
    return torch.cat(centres, 1)


def level_boxes(shapes: Sequence[Tuple[int, int]], sizes: Tensor, base_size: float) -> Tensor:
    """One box per pixel of every level (anchors, proposals): centred on the pixel, with side
    ``base_size * 2 ** l`` on level l.

    Args:
        shapes: (H_l, W_l) of every level.
        sizes: (bs or 1, L, 2) as in :func:`pixel_centres`.

    Returns:
        (bs or 1, N, 4) cxcywh.
    """
    centres = pixel_centres(shapes, sizes)
    sides = torch.cat([torch.full((h * w, 2), base_size * 2.0**level, device=sizes.device)
                       for level, (h, w) in enumerate(shapes)])
    return torch.cat((centres, sides.expand_as(centres)), -1)


def encoder_reference_points(levels: MultiScaleLevels) -> Tensor:
    """Every token's pixel centre as a reference point on every level (Deformable DETR encoder).

    Returns:
        (bs, N, L, 2) as (x, y): pixel (i, j) of level l, normalized by the valid size of level l,
        then scaled by the valid ratio of each level (so that it addresses the padded maps).
    """
    ratios = levels.valid_ratios
    points = pixel_centres(levels.shapes, ratios * levels.level_sizes())  # (bs, N, 2)
    return points[:, :, None] * ratios[:, None]


def inverse_sigmoid_boxes(boxes: Tensor, eps: float, invalid: Optional[Tensor] = None) -> Tensor:
    """Boxes (..., 4) in (0, 1) -> inverse-sigmoid space, ``+inf`` where a coordinate lies outside
    (eps, 1 - eps) or ``invalid`` (..., broadcastable, bool) is True."""
    outside = ~((boxes > eps) & (boxes < 1 - eps)).all(-1)
    if invalid is not None:
        outside = outside | invalid
    return torch.log(boxes / (1 - boxes)).masked_fill(outside[..., None], float('inf'))


class LevelAnchors(nn.Module):
    """RT-DETR's query-selection anchors, kept for the last layout and device asked for.

    Plain attributes, not buffers: they are never saved, moved by ``.to()`` / ``.half()``, or
    broadcast by DDP (whose ranks may see different batch shapes).

    Args:
        base_size: anchor side on the finest level, doubling per level.
        eps: anchors with a coordinate outside (eps, 1 - eps) are invalid.
    """

    def __init__(self, base_size: float = 0.05, eps: float = 0.01) -> None:
        super().__init__()
        self.base_size = base_size
        self.eps = eps
        self.key: Optional[Tuple[Shapes, torch.device]] = None
        self.anchors: Optional[Tensor] = None
        self.valid: Optional[Tensor] = None

    def forward(self, levels: MultiScaleLevels) -> Tuple[Tensor, Tensor]:
        """Returns anchors (1, N, 4) cxcywh in inverse-sigmoid space (``+inf`` where invalid) and
        valid (1, N, 1) bool. Shared tensors: not to be modified in place."""
        key = (levels.shapes, levels.spatial_shapes.device)
        if self.key != key:
            # normal tensors even when first made under inference mode: training reuses them
            with torch.inference_mode(False):
                sizes = levels.spatial_shapes.flip(-1).float()[None]  # (1, L, 2) as (W_l, H_l)
                self.anchors = inverse_sigmoid_boxes(
                    level_boxes(levels.shapes, sizes, self.base_size), self.eps)
                self.valid = self.anchors[..., :1].isfinite()
            self.key = key
        return self.anchors, self.valid
