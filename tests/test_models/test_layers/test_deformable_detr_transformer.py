"""Deformable DETR's encoder/decoder stacks: valid ratios, reference points and refinement against
values written out by hand, and what the decoder hands its layers."""
import math

import pytest
import torch
from torch import nn

from detr_plugin.models.layers import (DeformableDetrTransformerDecoder,
                                       DeformableDetrTransformerEncoder, MultiScaleLevels)
from detr_plugin.models.layers.deformable_detr_transformer import (encoder_reference_points,
                                                                   refine_boxes, valid_ratios)


def padded_mask(shape, valid):
    """(bs, H, W) mask, True outside the top-left (h, w) of each image."""
    mask = torch.ones(len(valid), *shape, dtype=torch.bool)
    for i, (h, w) in enumerate(valid):
        mask[i, :h, :w] = False
    return mask


def test_valid_ratios_by_hand():
    mask = padded_mask((5, 4), [(5, 4), (2, 3)])
    expected = torch.tensor([[1.0, 1.0], [3 / 4, 2 / 5]])  # (w, h)
    torch.testing.assert_close(valid_ratios(mask, 2, mask.device), expected)
    torch.testing.assert_close(valid_ratios(None, 3, mask.device), torch.ones(3, 2))


def test_encoder_reference_points_by_hand():
    """Level 0 is 2 x 3 with 1 x 2 valid (ratios w 2/3, h 1/2); level 1 is 1 x 2 with 1 x 1 valid
    (w 1/2, h 1). A pixel's centre is normalized by its own level's valid size, then scaled to
    each level by that level's ratio."""
    shapes = [(2, 3), (1, 2)]
    ratios = torch.tensor([[[2 / 3, 1 / 2], [1 / 2, 1.0]]])  # (1, L, 2) as (w, h)
    expected = []
    for lvl, (h, w, valid_w, valid_h) in enumerate([(2, 3, 2, 1), (1, 2, 1, 1)]):
        for i in range(h):
            for j in range(w):
                x, y = (j + 0.5) / valid_w, (i + 0.5) / valid_h
                expected.append([[x * 2 / 3, y * 1 / 2], [x * 1 / 2, y * 1.0]])
    points = encoder_reference_points(shapes, ratios)
    assert points.shape == (1, 8, 2, 2)
    torch.testing.assert_close(points[0], torch.tensor(expected))
    # the valid region's first pixel of level 0 sits at its centre on every level
    torch.testing.assert_close(points[0, 0, 0], torch.tensor([0.5 / 3, 0.5 / 2]))


def logit(p):
    return math.log(p / (1 - p))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_refine_boxes_by_hand():
    delta = torch.tensor([[0.3, -0.2, 0.5, -1.0]])
    box = torch.tensor([[0.4, 0.7, 0.2, 0.1]])
    expected = [sigmoid(d + logit(b)) for d, b in zip(delta[0].tolist(), box[0].tolist())]
    torch.testing.assert_close(refine_boxes(box, delta), torch.tensor([expected]))
    # a point reference: the offset moves the centre, w and h are predicted outright
    point = box[:, :2]
    expected = [sigmoid(0.3 + logit(0.4)), sigmoid(-0.2 + logit(0.7)), sigmoid(0.5), sigmoid(-1.0)]
    torch.testing.assert_close(refine_boxes(point, delta), torch.tensor([expected]))


def tiny_levels(bs=2):
    ratios = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.5, 0.75], [0.5, 1.0]]])[:bs]
    return MultiScaleLevels.from_shapes([(4, 4), (2, 2)], ratios)


LAYER = dict(embed_dims=16, num_heads=2, num_levels=2, num_points=2, ffn_dims=32, dropout=0.0)


def test_decoder_scales_references_and_refines_with_detached_boxes():
    torch.manual_seed(0)
    decoder = DeformableDetrTransformerDecoder(num_layers=3, layer_cfg=LAYER)
    heads = nn.ModuleList(nn.Linear(16, 4) for _ in range(3))
    seen = []
    for layer in decoder.layers:  # what every layer's cross-attention is given
        layer.cross_attn.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    levels = tiny_levels()
    query, query_pos = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    points = torch.rand(2, 5, 2)
    memory = torch.randn(2, 20, 16)
    hidden, refs = decoder(query, query_pos, points, memory, levels, box_heads=heads)

    assert hidden.shape == (3, 2, 5, 16) and len(refs) == 3
    assert refs[0] is points and refs[1].shape == (2, 5, 4)
    for i in range(1, 3):  # each layer starts from the previous head's refinement, detached
        expected = refine_boxes(refs[i - 1], heads[i - 1](hidden[i - 1]))
        torch.testing.assert_close(refs[i], expected)
        assert not refs[i].requires_grad
    # the attention sees the references scaled by every level's valid ratio (w, h, w, h for boxes)
    ratios = levels.valid_ratios
    torch.testing.assert_close(seen[0], points[:, :, None] * ratios[:, None])
    torch.testing.assert_close(seen[2], refs[2][:, :, None] * ratios.repeat(1, 1, 2)[:, None])


def test_decoder_without_heads_keeps_references():
    decoder = DeformableDetrTransformerDecoder(num_layers=2, layer_cfg=LAYER)
    boxes = torch.rand(1, 3, 4)
    _, refs = decoder(torch.randn(1, 3, 16), torch.randn(1, 3, 16), boxes, torch.randn(1, 20, 16),
                      tiny_levels(1))
    assert all(ref is boxes for ref in refs)
    with pytest.raises(ValueError, match='box_heads'):
        decoder(torch.randn(1, 3, 16), torch.randn(1, 3, 16), boxes, torch.randn(1, 20, 16),
                tiny_levels(1), box_heads=nn.ModuleList([nn.Linear(16, 4)]))


def test_encoder_ignores_padding():
    """A 2 x 2 image alone and padded into 4 x 4 (levels 4x4 -> 2x2 valid, 2x2 -> 1x1): the
    valid tokens' outputs agree."""
    torch.manual_seed(0)
    encoder = DeformableDetrTransformerEncoder(num_layers=2, layer_cfg=LAYER).eval()
    small = [torch.randn(1, 16, 2, 2), torch.randn(1, 16, 1, 1)]
    small_pos = [torch.randn(1, 16, 2, 2), torch.randn(1, 16, 1, 1)]

    def flat(maps):
        return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)

    def pad(maps):
        out = []
        for m in maps:
            big = torch.randn(1, 16, 2 * m.shape[2], 2 * m.shape[3])  # junk in the padding
            big[:, :, :m.shape[2], :m.shape[3]] = m
            out.append(big)
        return out

    alone = encoder(flat(small), flat(small_pos),
                    MultiScaleLevels.from_shapes([(2, 2), (1, 1)], torch.ones(1, 2, 2)))
    masks = [padded_mask((4, 4), [(2, 2)]), padded_mask((2, 2), [(1, 1)])]
    levels = MultiScaleLevels.from_shapes([(4, 4), (2, 2)], torch.full((1, 2, 2), 0.5),
                                          torch.cat([m.flatten(1) for m in masks], 1))
    padded = encoder(flat(pad(small)), flat(pad(small_pos)), levels)
    valid = ~levels.padding_mask[0]
    torch.testing.assert_close(padded[0, valid], alone[0], atol=1e-5, rtol=1e-5)
