"""Encoder and decoder stacks of Deformable DETR (Zhu et al. 2021, Sec. 4.1 and A.4).

Reference points live in the image's valid region, normalized to [0, 1]; before attention they
are scaled by each level's valid ratio, so that they address the padded level maps the attention
samples from (:mod:`.multi_scale` holds the level layout and the pixel grids).
"""
from typing import List, Optional

import torch
from torch import Tensor, nn

from detr_plugin.registry import MODELS
from .deformable_transformer import DeformableDecoderLayer, DeformableEncoderLayer
from .multi_scale import MultiScaleLevels, encoder_reference_points
from .predictions import DecoderHead, LayerPrediction


@MODELS.register_module()
class DeformableDetrTransformerEncoder(nn.Module):
    """``num_layers`` deformable self-attention layers over the tokens of all levels.

    Every token attends around its own pixel centre on every level.
    """

    def __init__(self, num_layers: int = 6, layer_cfg: Optional[dict] = None) -> None:
        super().__init__()
        layer_cfg = layer_cfg or {}
        self.layers = nn.ModuleList(DeformableEncoderLayer(**layer_cfg) for _ in range(num_layers))

    def forward(self, x: Tensor, pos: Tensor, levels: MultiScaleLevels) -> Tensor:
        """x, pos: (bs, N, C) tokens and their positional + level embeddings. Returns (bs, N, C)."""
        reference_points = encoder_reference_points(levels)
        for layer in self.layers:
            x = layer(x, pos, reference_points, levels)
        return x


@MODELS.register_module()
class DeformableDetrTransformerDecoder(nn.Module):
    """``num_layers`` decoder layers whose cross-attention samples around each query's reference.

    After every layer the head predicts that layer's classes and boxes and says where the next
    layer samples (:meth:`DeformableDETRHead.predict_layer`: the same reference, or with box
    refinement the refined box, detached).
    """

    def __init__(self, num_layers: int = 6, layer_cfg: Optional[dict] = None) -> None:
        super().__init__()
        layer_cfg = layer_cfg or {}
        self.layers = nn.ModuleList(DeformableDecoderLayer(**layer_cfg) for _ in range(num_layers))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, query: Tensor, query_pos: Tensor, reference: Tensor, memory: Tensor,
                levels: MultiScaleLevels, head: DecoderHead) -> List[LayerPrediction]:
        """
        Args:
            query, query_pos: (bs, Q, C) content queries and their positional embeddings.
            reference: (bs, Q, 2) points (cx, cy) or (bs, Q, 4) boxes cxcywh, in [0, 1] of the
                valid image region.
            memory: (bs, N, C) encoder output.
            levels: layout of ``memory``.
            head: gives every layer's prediction and next reference.

        Returns:
            The prediction of every layer run.
        """
        predictions, previous = [], None
        for i, layer in enumerate(self.layers[:head.num_layers_to_run(self.num_layers)]):
            ratios = levels.valid_ratios  # (bs, L, 2)
            if reference.shape[-1] == 4:
                ratios = torch.cat([ratios, ratios], -1)  # w and h scale as x and y
            query = layer(query, query_pos, reference[:, :, None] * ratios[:, None], memory,
                          levels)
            previous = head.predict_layer(i, query, reference, previous)
            predictions.append(previous)
            reference = previous.next_reference
        return predictions
