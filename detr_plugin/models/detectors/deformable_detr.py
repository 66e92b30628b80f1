"""Deformable DETR: Deformable Transformers for End-to-End Object Detection (Zhu et al. 2021)."""
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
from mmdet.models.detectors import BaseDetector
from mmdet.structures import SampleList
from torch import Tensor, nn

from detr_plugin.registry import MODELS, build_in_scope
from detr_plugin.ops import MultiScaleDeformableAttention
from ..layers.encoder_proposals import EncoderProposals
from ..layers.multi_scale import LevelIndex, MultiScaleLevels, flatten_levels, valid_ratios
from ..layers.predictions import DetectionOutputs
from .detr import padding_mask


class DecoderInput(NamedTuple):
    """What the decoder starts from."""
    query: Tensor      # (bs, Q, C) content queries
    query_pos: Tensor  # (bs, Q, C) their positional embeddings
    reference: Tensor  # (bs, Q, 2) points or (bs, Q, 4) boxes (two-stage), in [0, 1]
    # two-stage only: the encoder proposals' logits (bs, N, K) and boxes (bs, N, 4) cxcywh in [0, 1]
    enc_outputs: Optional[Tuple[Tensor, Tensor]]


@MODELS.register_module()
class DeformableDETR(BaseDetector):
    """Backbone levels -> deformable encoder -> decoder over object queries -> per-layer heads.

    Args:
        backbone: e.g. mmdet's ResNet with ``out_indices=(1, 2, 3)`` (C3-C5).
        neck: projection of every level to ``embed_dims`` with GroupNorm, plus the extra levels
            (mmdet's ChannelMapper: a 3x3 stride-2 conv on C5 for the fourth level).
        positional_encoding: ``SinePositionalEncoding(num_feats=embed_dims // 2, offset=-0.5)``.
        encoder / decoder: ``DeformableDetrTransformerEncoder`` / ``...Decoder`` configs.
        bbox_head: ``DeformableDETRHead`` config; receives the decoder depth, the variant flags,
            ``train_cfg`` and ``test_cfg``.
        num_queries: object queries (two-stage: proposals kept from the encoder).
        num_feature_levels: levels the neck outputs; must match the attention's ``num_levels``.
        with_box_refine: every decoder layer refines the boxes of the previous one.
        as_two_stage: the encoder proposes the decoder's reference boxes and queries.
    """

    def __init__(self,
                 backbone: dict,
                 neck: dict,
                 positional_encoding: dict,
                 encoder: dict,
                 decoder: dict,
                 bbox_head: dict,
                 num_queries: int = 300,
                 num_feature_levels: int = 4,
                 with_box_refine: bool = False,
                 as_two_stage: bool = False,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.with_box_refine = with_box_refine
        self.as_two_stage = as_two_stage
        self.backbone = build_in_scope(MODELS, backbone)
        self.neck = build_in_scope(MODELS, neck)
        self.positional_encoding = build_in_scope(MODELS, positional_encoding)
        self.encoder = build_in_scope(MODELS, encoder)
        self.decoder = build_in_scope(MODELS, decoder)
        self.bbox_head = build_in_scope(MODELS, dict(
            bbox_head, num_layers=self.decoder.num_layers, with_box_refine=with_box_refine,
            as_two_stage=as_two_stage, train_cfg=train_cfg, test_cfg=test_cfg))
        self.embed_dims = embed_dims = self.bbox_head.embed_dims
        self._check_widths(neck)

        self.level_embed = nn.Parameter(torch.zeros(num_feature_levels, embed_dims))
        self.level_index = LevelIndex()
        if as_two_stage:
            self.proposals = EncoderProposals(embed_dims)
        else:
            # positional part and content part of every query
            self.query_embedding = nn.Embedding(num_queries, 2 * embed_dims)
            self.reference_points = nn.Linear(embed_dims, 2)

    def _check_widths(self, neck: dict) -> None:
        pos_dims = 2 * self.positional_encoding.num_feats
        if pos_dims != self.embed_dims:
            raise ValueError(f'positional_encoding gives {pos_dims} channels but the transformer '
                             f'has embed_dims={self.embed_dims}; '
                             f'set num_feats={self.embed_dims // 2}')
        num_outs = neck.get('num_outs') or len(neck.get('in_channels', ()))
        if num_outs and num_outs != self.num_feature_levels:  # a ChannelMapper-like neck
            raise ValueError(f'the neck gives {num_outs} levels (num_outs) but '
                             f'num_feature_levels={self.num_feature_levels}')
        for attn in self.modules():
            if isinstance(attn, MultiScaleDeformableAttention) and \
                    attn.num_levels != self.num_feature_levels:
                raise ValueError(f'the attention layers read {attn.num_levels} levels (num_levels) '
                                 f'but num_feature_levels={self.num_feature_levels}')

    def init_weights(self) -> None:
        """As the original: Xavier on every matrix of the transformer, then the attention's own
        init; the reference-point layer Xavier with bias 0; level embeddings N(0, 1)."""
        super().init_weights()  # backbone (pretrained), neck (Xavier), head
        transformer = [self.encoder, self.decoder]
        transformer += [self.proposals] if self.as_two_stage else [self.reference_points]
        for module in transformer:
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.init_weights()
        if not self.as_two_stage:
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    # --------------------------------------------------------------- stages
    def extract_feat(self, batch_inputs: Tensor) -> Tuple[Tensor, ...]:
        """(bs, 3, H, W) -> num_feature_levels maps (bs, C, H_l, W_l), finest first."""
        return tuple(self.neck(self.backbone(batch_inputs)))

    def flatten_levels(self, feats: Sequence[Tensor], batch_data_samples: Optional[SampleList]
                       ) -> Tuple[Tensor, Tensor, MultiScaleLevels]:
        """Tokens (bs, N, C) of all levels, their positional + level embeddings (bs, N, C), and
        the levels' layout. Padding masks come from the images' sizes in the metainfo."""
        bs = feats[0].shape[0]
        masks = [padding_mask(batch_data_samples, feat) for feat in feats]  # (bs, h, w) or None
        pos = []
        for lvl, (feat, mask) in enumerate(zip(feats, masks)):
            if mask is None:
                mask = feat.new_zeros((bs, *feat.shape[-2:]), dtype=torch.bool)
            pe = self.positional_encoding(mask)
            pos.append(pe.to(feat.dtype).flatten(2).transpose(1, 2) + self.level_embed[lvl])
        ratios = torch.stack([valid_ratios(mask, bs, feats[0].device) for mask in masks], 1)
        tokens, levels = flatten_levels(feats, self.level_index, ratios,
                                        None if masks[0] is None else masks)
        return tokens, torch.cat(pos, 1), levels

    def decoder_input(self, memory: Tensor, levels: MultiScaleLevels) -> DecoderInput:
        """Learned queries with references from their positional part, or (two-stage) the top
        ``num_queries`` encoder proposals."""
        bs = memory.shape[0]
        if not self.as_two_stage:
            query_pos, query = self.query_embedding.weight.split(self.embed_dims, -1)  # (Q, C) each
            query_pos = query_pos[None].expand(bs, -1, -1)
            reference = self.reference_points(query_pos).float().sigmoid()  # (bs, Q, 2)
            return DecoderInput(query[None].expand(bs, -1, -1), query_pos, reference, None)

        num_tokens = memory.shape[1]
        if self.num_queries > num_tokens:
            raise ValueError(f'num_queries={self.num_queries} proposals requested but the images '
                             f'give only {num_tokens} encoder tokens')
        proposal_memory, proposals = self.proposals(memory, levels)  # (bs, N, C), (bs, N, 4)
        enc_logits, enc_boxes = self.bbox_head.predict_encoder(proposal_memory, proposals)
        # the class-agnostic encoder loss trains class 0 as "object"
        top = enc_logits[..., 0].topk(self.num_queries, dim=1).indices  # (bs, Q)
        top_boxes = enc_boxes.gather(1, top[..., None].expand(-1, -1, 4)).detach()
        query_pos, query = self.proposals.queries(top_boxes)
        return DecoderInput(query, query_pos, top_boxes.sigmoid(),
                            (enc_logits, enc_boxes.sigmoid()))

    def forward_transformer(self, feats: Sequence[Tensor],
                            batch_data_samples: Optional[SampleList]) -> DetectionOutputs:
        """The decoder layers' predictions and (two-stage) the encoder proposals'."""
        tokens, pos, levels = self.flatten_levels(feats, batch_data_samples)
        memory = self.encoder(tokens, pos, levels)
        start = self.decoder_input(memory, levels)
        predictions = self.decoder(start.query, start.query_pos, start.reference, memory, levels,
                                   self.bbox_head)
        outputs = DetectionOutputs.from_layers(predictions)
        if start.enc_outputs is None:
            return outputs
        return outputs._replace(enc_logits=start.enc_outputs[0], enc_boxes=start.enc_outputs[1])

    # ---------------------------------------------------------------- modes
    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        gt = self.bbox_head.ground_truth(batch_data_samples, batch_inputs)
        outputs = self.forward_transformer(self.extract_feat(batch_inputs), batch_data_samples)
        return self.bbox_head.loss(outputs, gt)

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        outputs = self.forward_transformer(self.extract_feat(batch_inputs), batch_data_samples)
        results = self.bbox_head.predict(outputs, batch_data_samples, rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results)

    def _forward(self, batch_inputs: Tensor,
                 batch_data_samples: Optional[SampleList] = None) -> Tuple[Tensor, Tensor]:
        """Raw logits (L, bs, Q, K) and boxes (L, bs, Q, 4) cxcywh of every decoder layer."""
        outputs = self.forward_transformer(self.extract_feat(batch_inputs), batch_data_samples)
        return outputs.logits, outputs.boxes
