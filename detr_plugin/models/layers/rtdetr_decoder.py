"""RT-DETR's decoder side (Zhao et al., CVPR 2024, Sec. 4.3): IoU-aware query selection + decoder.

From the fused encoder levels it (1) projects and flattens them into one memory, (2) asks the
head to score every memory token and regress a box around its anchor, (3) takes the
``num_queries`` tokens of highest class score as initial queries (content: the token's features;
position: its box), then (4) runs deformable decoder layers, asking the head after each layer
for its prediction and the next reference box (:meth:`RTDETRHead.predict_layer`).
"""
from collections import OrderedDict
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from detr_plugin.registry import MODELS
from .deformable_transformer import DeformableDecoderLayer
from .denoising import DenoisingGroups
from .mlp import MLP
from .multi_scale import LevelAnchors, LevelIndex, MultiScaleLevels, flatten_levels
from .predictions import DecoderHead, DetectionOutputs, LayerPrediction


class QuerySelection(NamedTuple):
    """The top-k memory tokens chosen as initial decoder queries (bs images, Q queries)."""
    query: Tensor            # (bs, Q, C) detached encoder features of the chosen tokens
    ref_boxes_unact: Tensor  # (bs, Q, 4) detached boxes, cxcywh in inverse-sigmoid space
    enc_logits: Tensor       # (bs, Q, K) encoder class logits of the chosen tokens
    enc_boxes: Tensor        # (bs, Q, 4) encoder boxes, cxcywh in [0, 1] (supervised)


class DecoderInputs(NamedTuple):
    """What the decoder layers start from (Q' = denoising + selected queries)."""
    query: Tensor                 # (bs, Q', C) initial content queries
    reference: Tensor             # (bs, Q', 4) their boxes, cxcywh in [0, 1], no gradient
    attn_mask: Optional[Tensor]   # (Q', Q') bool, True = blocked; None without denoising
    memory: Tensor                # (bs, N, C) the flattened encoder levels
    levels: MultiScaleLevels
    selection: QuerySelection     # the encoder's top-k (for its loss)


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
                 anchor_size: float = 0.05,
                 anchor_eps: float = 0.01) -> None:
        super().__init__()
        layer_cfg = dict(dict(num_heads=8, num_levels=len(in_channels), num_points=4,
                              ffn_dims=1024, dropout=0.0, act='relu'), **(layer_cfg or {}))
        if layer_cfg['num_levels'] != len(in_channels):
            raise ValueError(f"layer_cfg num_levels={layer_cfg['num_levels']} differs from the "
                             f'{len(in_channels)} levels of in_channels')
        self.embed_dims = embed_dims
        self.num_queries = num_queries
        self.num_layers = num_layers
        self.level_index = LevelIndex()
        self.anchors = LevelAnchors(anchor_size, anchor_eps)
        self.input_proj = nn.ModuleList(self.make_input_proj(c) for c in in_channels)
        self.enc_output = nn.Sequential(nn.Linear(embed_dims, embed_dims), nn.LayerNorm(embed_dims))
        self.query_pos_head = self.make_query_pos_head()
        self.layers = nn.ModuleList(self.make_layer(layer_cfg) for _ in range(num_layers))
        nn.init.xavier_uniform_(self.enc_output[0].weight)
        for linear in self.query_pos_head.layers:
            nn.init.xavier_uniform_(linear.weight)

    def make_input_proj(self, in_channels: int) -> nn.Module:
        """One level's projection to ``embed_dims``: 1x1 conv + BatchNorm."""
        return nn.Sequential(OrderedDict(conv=nn.Conv2d(in_channels, self.embed_dims, 1, bias=False),
                                         norm=nn.BatchNorm2d(self.embed_dims)))

    def make_layer(self, layer_cfg: dict) -> nn.Module:
        """One decoder layer."""
        return DeformableDecoderLayer(self.embed_dims, **layer_cfg)

    def make_query_pos_head(self) -> MLP:
        """The MLP embedding a reference box (4,) as a query position (embed_dims,)."""
        return MLP(4, 2 * self.embed_dims, self.embed_dims, num_layers=2)

    def forward(self, feats: Sequence[Tensor], head: DecoderHead,
                denoising: Optional[DenoisingGroups] = None) -> DetectionOutputs:
        """
        Args:
            feats: encoder levels (bs, in_channels[l], H_l, W_l), finest first.
            head: scores and boxes the memory tokens (``predict_encoder``) and gives every
                decoder layer's prediction (``predict_layer``).
            denoising: denoising queries, put before the selected ones (training only).

        Returns:
            The layers' predictions (denoising queries split off) and the encoder's top-k.
        """
        inputs = self.decoder_inputs(feats, head, denoising)
        predictions = self.decode(inputs.query, inputs.reference, inputs.memory, inputs.levels,
                                  head, inputs.attn_mask)
        return DetectionOutputs.from_layers(predictions, denoising)._replace(
            enc_logits=inputs.selection.enc_logits, enc_boxes=inputs.selection.enc_boxes)

    def decoder_inputs(self, feats: Sequence[Tensor], head: DecoderHead,
                       denoising: Optional[DenoisingGroups] = None) -> DecoderInputs:
        """The flattened levels, the selected queries and, before them, the denoising ones."""
        memory, levels = self.flatten_levels(feats)
        selection = self.select_queries(memory, levels, head)
        query, ref_unact, attn_mask = selection.query, selection.ref_boxes_unact, None
        if denoising is not None:
            query = torch.cat([denoising.query, query], 1)
            ref_unact = torch.cat([denoising.ref_boxes_unact, ref_unact], 1)
            attn_mask = denoising.attn_mask
        return DecoderInputs(query, ref_unact.sigmoid(), attn_mask, memory, levels, selection)

    def flatten_levels(self, feats: Sequence[Tensor]) -> Tuple[Tensor, MultiScaleLevels]:
        """Per-level 1x1 conv + BN, then all levels' tokens (bs, N, C) concatenated."""
        if len(feats) != len(self.input_proj):
            raise ValueError(f'expected {len(self.input_proj)} feature levels, got {len(feats)}')
        return flatten_levels([p(feat) for p, feat in zip(self.input_proj, feats)],
                              self.level_index)

    def select_queries(self, memory: Tensor, levels: MultiScaleLevels,
                       head: DecoderHead) -> QuerySelection:
        """IoU-aware query selection: the ``num_queries`` tokens of highest max class logit."""
        num_tokens = memory.shape[1]
        if self.num_queries > num_tokens:
            raise ValueError(f'num_queries={self.num_queries} queries requested but the images '
                             f'give only {num_tokens} encoder tokens (feature maps '
                             f'{list(levels.shapes)}): use larger images or fewer queries')
        anchors, valid = self.anchors(levels)  # (1, N, 4), (1, N, 1)
        memory = self.enc_output(memory * valid.to(memory.dtype))  # (bs, N, C)
        logits, boxes_unact = head.predict_encoder(memory, anchors)  # (bs, N, K), (bs, N, 4)
        index = logits.max(-1).values.topk(self.num_queries, dim=1).indices  # (bs, Q)

        def gather(x: Tensor) -> Tensor:
            return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))

        top_boxes_unact = gather(boxes_unact)
        return QuerySelection(query=gather(memory).detach(),
                              ref_boxes_unact=top_boxes_unact.detach(),
                              enc_logits=gather(logits),
                              enc_boxes=top_boxes_unact.sigmoid())

    def decode(self, query: Tensor, reference: Tensor, memory: Tensor, levels: MultiScaleLevels,
               head: DecoderHead, attn_mask: Optional[Tensor] = None) -> List[LayerPrediction]:
        """Runs the decoder layers the head asks for.

        Args:
            query: (bs, Q', C) initial content queries; reference: (bs, Q', 4) their boxes,
                cxcywh in [0, 1], no gradient; attn_mask: (Q', Q') bool, True = blocked.

        Returns:
            The prediction of every layer run.
        """
        predictions, previous = [], None
        for i, layer in enumerate(self.layers[:head.num_layers_to_run(self.num_layers)]):
            query = layer(query, self.query_pos_head(reference), reference[:, :, None], memory,
                          levels, attn_mask)
            previous = head.predict_layer(i, query, reference, previous)
            predictions.append(previous)
            reference = previous.next_reference
        return predictions
