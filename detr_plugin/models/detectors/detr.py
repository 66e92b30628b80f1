"""DETR: End-to-End Object Detection with Transformers (Carion et al., ECCV 2020)."""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from mmdet.models.detectors import BaseDetector
from mmdet.structures import SampleList
from torch import Tensor, nn

from detr_plugin.registry import MODELS, build_in_scope


@MODELS.register_module()
class DETR(BaseDetector):
    """Backbone -> 1x1 projection -> transformer encoder -> decoder over learned queries -> head.

    Args:
        backbone: e.g. mmdet's ResNet with frozen BatchNorm and ``out_indices=(3,)``.
        neck: the 1x1 projection to ``embed_dims`` (mmdet's ChannelMapper, no norm/activation).
        positional_encoding: e.g. ``SinePositionalEncoding(num_feats=embed_dims // 2)``.
        encoder / decoder: ``DetrTransformerEncoder`` / ``DetrTransformerDecoder`` configs.
        bbox_head: ``DETRHead`` config; receives ``train_cfg`` and ``test_cfg``.
        num_queries: number of learned object queries.
    """

    def __init__(self,
                 backbone: dict,
                 neck: dict,
                 positional_encoding: dict,
                 encoder: dict,
                 decoder: dict,
                 bbox_head: dict,
                 num_queries: int = 100,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = build_in_scope(MODELS, backbone)
        self.neck = build_in_scope(MODELS, neck)
        self.positional_encoding = build_in_scope(MODELS, positional_encoding)
        self.encoder = build_in_scope(MODELS, encoder)
        self.decoder = build_in_scope(MODELS, decoder)
        self.bbox_head = build_in_scope(
            MODELS, dict(bbox_head, train_cfg=train_cfg, test_cfg=test_cfg))
        self.embed_dims = self.bbox_head.embed_dims
        self.num_queries = num_queries
        self.query_embedding = nn.Embedding(num_queries, self.embed_dims)
        pos_dims = 2 * self.positional_encoding.num_feats
        if pos_dims != self.embed_dims:
            raise ValueError(f'positional_encoding gives {pos_dims} channels but the transformer '
                             f'has embed_dims={self.embed_dims}; set num_feats={self.embed_dims // 2}')

    def init_weights(self) -> None:
        super().init_weights()
        # as the original: Xavier on every matrix of the transformer
        for module in (self.encoder, self.decoder):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def extract_feat(self, batch_inputs: Tensor) -> Tensor:
        """(bs, 3, H, W) -> (bs, C, h, w), the projected last backbone stage."""
        return self.neck(self.backbone(batch_inputs))[-1]

    def forward_transformer(self, feat: Tensor, batch_data_samples: Optional[SampleList]) -> Tensor:
        """feat: (bs, C, h, w). Returns the decoder outputs of every layer, (L, bs, Q, C)."""
        bs, c, h, w = feat.shape
        mask = padding_mask(batch_data_samples, feat)
        pos = self.positional_encoding(
            mask if mask is not None else feat.new_zeros((bs, h, w), dtype=torch.bool))
        pos = pos.to(feat.dtype).flatten(2).transpose(1, 2)  # (bs, h*w, C)
        flat_mask = mask.flatten(1) if mask is not None else None  # (bs, h*w)
        memory = self.encoder(feat.flatten(2).transpose(1, 2), pos, flat_mask)
        query_pos = self.query_embedding.weight[None].expand(bs, -1, -1)  # (bs, Q, C)
        query = torch.zeros_like(query_pos)
        return self.decoder(query, query_pos, memory, pos, flat_mask)

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        hidden_states = self.forward_transformer(self.extract_feat(batch_inputs), batch_data_samples)
        return self.bbox_head.loss(hidden_states, batch_data_samples)

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        hidden_states = self.forward_transformer(self.extract_feat(batch_inputs), batch_data_samples)
        results = self.bbox_head.predict(hidden_states, batch_data_samples, rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results)

    def _forward(self, batch_inputs: Tensor,
                 batch_data_samples: Optional[SampleList] = None) -> Tuple[Tensor, Tensor]:
        """Raw outputs of every decoder layer: logits (L, bs, Q, K+1), boxes (L, bs, Q, 4)."""
        hidden_states = self.forward_transformer(self.extract_feat(batch_inputs), batch_data_samples)
        return self.bbox_head(hidden_states)


def padding_mask(batch_data_samples: Optional[SampleList], feat: Tensor) -> Optional[Tensor]:
    """(bs, h, w) bool mask, True where ``feat`` covers batch padding; None when no image is padded.

    Decided from the metainfo on the host, so an unpadded batch costs no device work and keeps
    attention on its fastest (mask-free) kernels.
    """
    if not batch_data_samples:
        return None
    batch_h, batch_w = batch_data_samples[0].metainfo['batch_input_shape']
    shapes = [tuple(s.metainfo['img_shape'][:2]) for s in batch_data_samples]
    if all(shape == (batch_h, batch_w) for shape in shapes):
        return None
    mask = feat.new_ones((len(shapes), batch_h, batch_w))
    for i, (h, w) in enumerate(shapes):
        mask[i, :h, :w] = 0
    return F.interpolate(mask[None], size=feat.shape[-2:])[0].to(torch.bool)
