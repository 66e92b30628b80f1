"""What flows from a decoder layer to the head and from the decoder to the loss.

A decoder runs its layers and, after each, asks the head for that layer's prediction
(``head.predict_layer``); the head alone knows how a layer's output becomes logits, boxes and
the next layer's reference (box refinement, detach rules, which layers count at inference). A
new family is a new head with its own ``predict_layer``, not an edit to the decoders.
"""
from typing import Any, List, NamedTuple, Optional, Protocol

import torch
from torch import Tensor

from .denoising import DenoisingGroups


class LayerPrediction(NamedTuple):
    """One decoder layer's prediction (bs images, Q queries, K classes)."""
    logits: Optional[Tensor]  # (bs, Q, K); None where the layer's output is not used
                              # (inference, before the head's output layer)
    boxes: Tensor             # (bs, Q, 4) cxcywh in [0, 1], float32: the supervised / output box
    next_reference: Tensor    # (bs, Q, 2 | 4) what the next layer samples around, detached as
                              # the family says
    carry: Optional[Any] = None      # what the head's next step needs from this one, with its
                                     # gradient, private to the head (RT-DETR: the refined box
                                     # tensor, for look-forward-twice; D-FINE: a RefinementState)
    extras: Optional[Tensor] = None  # (bs, Q, E) further per-layer outputs the loss needs


class DecoderHead(Protocol):
    """The per-layer side of a DETR-family head, as the decoders call it."""

    def num_layers_to_run(self, num_layers: int) -> int:
        """How many of the decoder's ``num_layers`` layers to run (fewer at inference when a
        middle layer is the output)."""

    def predict_layer(self, index: int, query: Tensor, reference: Tensor,
                      previous: Optional[LayerPrediction]) -> LayerPrediction:
        """Layer ``index``'s output query (bs, Q, C) and the reference it sampled around
        (bs, Q, 2 | 4) -> its prediction; ``previous`` is layer ``index - 1``'s (None first)."""


class DenoisingOutputs(NamedTuple):
    """The denoising queries' predictions of every layer (training only), D queries."""
    logits: Tensor                   # (L, bs, D, K)
    boxes: Tensor                    # (L, bs, D, 4)
    groups: DenoisingGroups          # how they were made (targets, attention mask)
    extras: Optional[Tensor] = None  # (L, bs, D, E)


class DetectionOutputs(NamedTuple):
    """Everything a head needs for its loss (training) or its predictions (inference)."""
    logits: Tensor                      # (L', bs, Q, K) the layers with logits: every layer in
                                        # training, the output layer at inference
    boxes: Tensor                       # (L', bs, Q, 4) cxcywh in [0, 1]
    extras: Optional[Tensor] = None     # (L', bs, Q, E)
    enc_logits: Optional[Tensor] = None  # (bs, Q or N, K) the encoder's queries / proposals
    enc_boxes: Optional[Tensor] = None   # (bs, Q or N, 4) cxcywh in [0, 1]
    denoising: Optional[DenoisingOutputs] = None
    pre: Optional['DetectionOutputs'] = None  # a supervised first-stage prediction inside the
                                              # decoder (D-FINE: layer 0's pre-box), training only

    @classmethod
    def from_layers(cls, predictions: List[LayerPrediction],
                    denoising: Optional[DenoisingGroups] = None) -> 'DetectionOutputs':
        """Stacks the layers that gave logits; with ``denoising``, its D queries (first in every
        layer) are split off into :class:`DenoisingOutputs`."""
        used = [p for p in predictions if p.logits is not None]
        logits = torch.stack([p.logits for p in used])
        boxes = torch.stack([p.boxes for p in used])
        extras = None if used[0].extras is None else torch.stack([p.extras for p in used])
        if denoising is None:
            return cls(logits, boxes, extras)
        d = denoising.query.shape[1]
        dn = DenoisingOutputs(logits[:, :, :d], boxes[:, :, :d], denoising,
                              None if extras is None else extras[:, :, :d])
        return cls(logits[:, :, d:], boxes[:, :, d:], None if extras is None else extras[:, :, d:],
                   denoising=dn)
