"""RT-DETR's decoder side (Zhao et al., CVPR 2024, Sec. 4.3): IoU-aware query selection + decoder.

From the fused encoder levels it (1) projects and flattens them into one memory, (2) scores every
memory token with an encoder class head and regresses a box around its anchor, (3) takes the
``num_queries`` tokens of highest class score as initial queries (content: the token's features;
position: its box), then (4) runs deformable decoder layers that refine the boxes in
inverse-sigmoid space. The class and box heads belong to :class:`RTDETRHead` and are passed in.
"""
import functools
from collections import OrderedDict
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from mmdet.models.layers import inverse_sigmoid
from torch import Tensor, nn

from detr_plugin.ops import level_index_tensors
from detr_plugin.registry import MODELS
from .deformable_transformer import DeformableDecoderLayer
from .denoising import DenoisingGroups
from .mlp import MLP


class FlatMemory(NamedTuple):
    """All levels' tokens concatenated, finest level first."""
    memory: Tensor             # (bs, N, C), N = sum(H_l * W_l)
    spatial_shapes: Tensor     # (L, 2) as (H_l, W_l), long
    level_start_index: Tensor  # (L,)
    shapes: Tuple[Tuple[int, int], ...]  # the same (H_l, W_l) on the host


class QuerySelection(NamedTuple):
    """The top-k memory tokens chosen as initial decoder queries (bs images, Q queries)."""
    query: Tensor            # (bs, Q, C) detached encoder features of the chosen tokens
    ref_boxes_unact: Tensor  # (bs, Q, 4) detached boxes, cxcywh in inverse-sigmoid space
    enc_logits: Tensor       # (bs, Q, K) encoder class logits of the chosen tokens
    enc_boxes: Tensor        # (bs, Q, 4) encoder boxes, cxcywh in [0, 1] (supervised)


class RTDETROutputs(NamedTuple):
    """Everything the head needs for the loss (training) or the predictions (inference)."""
    logits: Tensor                     # (L', bs, Q, K): all L layers in training, 1 at inference
    boxes: Tensor                      # (L', bs, Q, 4) cxcywh in [0, 1]
    enc_logits: Tensor                 # (bs, Q, K) encoder top-k
    enc_boxes: Tensor                  # (bs, Q, 4)
    dn_logits: Optional[Tensor] = None  # (L, bs, D, K) denoising queries (training only)
    dn_boxes: Optional[Tensor] = None   # (L, bs, D, 4)
    denoising: Optional[DenoisingGroups] = None


def generate_anchors(spatial_shapes: Sequence[Tuple[int, int]], grid_size: float = 0.05,
                     eps: float = 0.01, device=None) -> Tuple[Tensor, Tensor]:
    """One anchor per memory token: centred on its pixel, side ``grid_size * 2 ** level``.

    Returns:
        anchors: (1, N, 4) cxcywh in inverse-sigmoid space, +inf where invalid.
        valid: (1, N, 1) bool, True where every coordinate lies in (eps, 1 - eps).
    """
    anchors = []
    for level, (h, w) in enumerate(spatial_shapes):
        y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                              torch.arange(w, dtype=torch.float32, device=device), indexing='ij')
        centres = torch.stack([(x + 0.5) / w, (y + 0.5) / h], -1).reshape(-1, 2)  # (H*W, 2)
        sizes = torch.full_like(centres, grid_size * 2.0 ** level)
        anchors.append(torch.cat([centres, sizes], -1))
    anchors = torch.cat(anchors)[None]  # (1, N, 4)
    valid = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    unact = torch.log(anchors / (1 - anchors))
    return torch.where(valid, unact, torch.inf), valid


@functools.lru_cache(maxsize=16)
def cached_anchors(shapes: Tuple[Tuple[int, int], ...], grid_size: float, eps: float,
                   device: torch.device) -> Tuple[Tensor, Tensor]:
    """:func:`generate_anchors`, made once per layout rather than on every forward (shared
    tensors: not to be modified in place). Normal tensors even when first asked for under
    ``torch.inference_mode``, so that training can use them afterwards."""
    with torch.inference_mode(False):
        return generate_anchors(shapes, grid_size, eps, device)


@MODELS.register_module()
class RTDETRDecoder(nn.Module):
    """Input projection, query selection and the decoder layers of RT-DETR.

    Args:
        in_channels: channels of the encoder levels, finest first.
        embed_dims: decoder width.
        num_queries: number of queries selected from the memory.
        num_layers: decoder layers.
        layer_cfg: :class:`DeformableDecoderLayer` arguments (num_heads, num_levels, num_points,
            ffn_dims, dropout, act); ``num_levels`` must equal ``len(in_channels)``.
        eval_idx: the layer whose output is the prediction at inference (negative counts from
            the end); the layers after it are not run then.
        anchor_size: anchor side on the finest level, doubling per level.
        anchor_eps: anchors with a coordinate outside (eps, 1 - eps) are invalid (memory zeroed,
            box at +inf).
    """

    def __init__(self,
                 in_channels: Sequence[int] = (256, 256, 256),
                 embed_dims: int = 256,
                 num_queries: int = 300,
                 num_layers: int = 6,
                 layer_cfg: Optional[dict] = None,
                 eval_idx: int = -1,
                 anchor_size: float = 0.05,
                 anchor_eps: float = 0.01) -> None:
        super().__init__()
        layer_cfg = dict(dict(num_heads=8, num_levels=len(in_channels), num_points=4,
                              ffn_dims=1024, dropout=0.0, act='relu'), **(layer_cfg or {}))
        if layer_cfg['num_levels'] != len(in_channels):
            raise ValueError(f"layer_cfg num_levels={layer_cfg['num_levels']} differs from the "
                             f'{len(in_channels)} levels of in_channels')
        if not -num_layers <= eval_idx < num_layers:
            raise ValueError(f'eval_idx={eval_idx} is out of range for {num_layers} layers')
        self.embed_dims = embed_dims
        self.num_queries = num_queries
        self.num_layers = num_layers
        self.eval_idx = eval_idx % num_layers
        self.anchor_size = anchor_size
        self.anchor_eps = anchor_eps
        self.input_proj = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(c, embed_dims, 1, bias=False),
                                      norm=nn.BatchNorm2d(embed_dims)))
            for c in in_channels)
        self.enc_output = nn.Sequential(nn.Linear(embed_dims, embed_dims), nn.LayerNorm(embed_dims))
        self.query_pos_head = MLP(4, 2 * embed_dims, embed_dims, num_layers=2)
        self.layers = nn.ModuleList(DeformableDecoderLayer(embed_dims, **layer_cfg)
                                    for _ in range(num_layers))
        nn.init.xavier_uniform_(self.enc_output[0].weight)
        for linear in self.query_pos_head.layers:
            nn.init.xavier_uniform_(linear.weight)

    def forward(self, feats: Sequence[Tensor], cls_heads: Sequence[nn.Module],
                box_heads: Sequence[nn.Module], enc_cls_head: nn.Module, enc_box_head: nn.Module,
                denoising: Optional[DenoisingGroups] = None) -> RTDETROutputs:
        """
        Args:
            feats: encoder levels (bs, in_channels[l], H_l, W_l), finest first.
            cls_heads / box_heads: one class head (C -> K) and one box head (C -> 4, a delta in
                inverse-sigmoid space) per decoder layer.
            enc_cls_head / enc_box_head: the heads scoring and boxing every memory token.
            denoising: denoising queries, put before the selected ones (training only).
        """
        flat = self.flatten_levels(feats)
        selection = self.select_queries(flat, enc_cls_head, enc_box_head)
        query, ref_unact, attn_mask = selection.query, selection.ref_boxes_unact, None
        if denoising is not None:
            query = torch.cat([denoising.query, query], 1)
            ref_unact = torch.cat([denoising.ref_boxes_unact, ref_unact], 1)
            attn_mask = denoising.attn_mask
        logits, boxes = self.decode(query, ref_unact, flat, cls_heads, box_heads, attn_mask)
        outputs = RTDETROutputs(logits, boxes, selection.enc_logits, selection.enc_boxes)
        if denoising is None:
            return outputs
        num_dn = denoising.query.shape[1]
        return outputs._replace(logits=logits[:, :, num_dn:], boxes=boxes[:, :, num_dn:],
                                dn_logits=logits[:, :, :num_dn], dn_boxes=boxes[:, :, :num_dn],
                                denoising=denoising)

    def flatten_levels(self, feats: Sequence[Tensor]) -> FlatMemory:
        """Per-level 1x1 conv + BN, then all levels' tokens concatenated."""
        if len(feats) != len(self.input_proj):
            raise ValueError(f'expected {len(self.input_proj)} feature levels, got {len(feats)}')
        proj = [p(feat) for p, feat in zip(self.input_proj, feats)]
        shapes = tuple((f.shape[-2], f.shape[-1]) for f in proj)
        spatial_shapes, starts = level_index_tensors(shapes, proj[0].device)
        memory = torch.cat([f.flatten(2).transpose(1, 2) for f in proj], 1)  # (bs, N, C)
        return FlatMemory(memory, spatial_shapes, starts, shapes)

    def select_queries(self, flat: FlatMemory, cls_head: nn.Module,
                       box_head: nn.Module) -> QuerySelection:
        """IoU-aware query selection: the ``num_queries`` tokens of highest max class logit."""
        num_tokens = flat.memory.shape[1]
        if self.num_queries > num_tokens:
            raise ValueError(f'num_queries={self.num_queries} queries requested but the images '
                             f'give only {num_tokens} encoder tokens (feature maps '
                             f'{list(flat.shapes)}): use larger images or fewer queries')
        anchors, valid = cached_anchors(flat.shapes, self.anchor_size, self.anchor_eps,
                                        flat.memory.device)
        memory = self.enc_output(flat.memory * valid.to(flat.memory.dtype))  # (bs, N, C)
        logits = cls_head(memory)  # (bs, N, K)
        boxes_unact = box_head(memory) + anchors  # (bs, N, 4)
        index = logits.max(-1).values.topk(self.num_queries, dim=1).indices  # (bs, Q)

        def gather(x: Tensor) -> Tensor:
            return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))

        top_boxes_unact = gather(boxes_unact)
        return QuerySelection(query=gather(memory).detach(),
                              ref_boxes_unact=top_boxes_unact.detach(),
                              enc_logits=gather(logits),
                              enc_boxes=top_boxes_unact.sigmoid())

    def decode(self, query: Tensor, ref_boxes_unact: Tensor, flat: FlatMemory,
               cls_heads: Sequence[nn.Module], box_heads: Sequence[nn.Module],
               attn_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Runs the decoder layers, refining the reference boxes layer by layer.

        Args:
            query: (bs, Q', C) initial content queries; ref_boxes_unact: (bs, Q', 4) their boxes,
                cxcywh in inverse-sigmoid space; attn_mask: (Q', Q') bool, True = blocked.

        Returns:
            Class logits (L', bs, Q', K) and boxes (L', bs, Q', 4) cxcywh in [0, 1], of every
            layer in training and of layer ``eval_idx`` only at inference.

        Each layer's box is ``sigmoid(delta + inverse_sigmoid(ref))`` of its (detached) reference;
        the next layer uses it, detached, as reference. In training the supervised box of layer
        i > 0 is instead computed from layer i - 1's box *with* its gradient, so every box loss
        also trains the previous layer's box head (DINO's look-forward-twice).
        """
        ref = ref_boxes_unact.sigmoid()  # (bs, Q', 4), no gradient
        prev_box = ref
        all_logits, all_boxes = [], []
        for i, layer in enumerate(self.layers):
            query = layer(query, self.query_pos_head(ref), ref[:, :, None], flat.memory,
                          flat.spatial_shapes, flat.level_start_index, None, attn_mask)
            delta = box_heads[i](query)
            box = (delta + inverse_sigmoid(ref)).sigmoid()
            if self.training:
                all_logits.append(cls_heads[i](query))
                all_boxes.append(box if i == 0 else (delta + inverse_sigmoid(prev_box)).sigmoid())
            elif i == self.eval_idx:
                all_logits.append(cls_heads[i](query))
                all_boxes.append(box)
                break
            prev_box = box
            ref = box.detach()
        return torch.stack(all_logits), torch.stack(all_boxes)
