"""Deformable DETR's encoder/decoder stacks: what the decoder hands its layers and its head
(the refinement rule checked against the formula written out), and padding in the encoder."""

import torch

from detr_plugin.models.dense_heads import DeformableDETRHead
from detr_plugin.models.layers import (DeformableDetrTransformerDecoder,
                                       DeformableDetrTransformerEncoder, LevelIndex,
                                       MultiScaleLevels)


def padded_mask(shape, valid):
    """(bs, H, W) mask, True outside the top-left (h, w) of each image."""
    mask = torch.ones(len(valid), *shape, dtype=torch.bool)
    for i, (h, w) in enumerate(valid):
        mask[i, :h, :w] = False
    return mask


def tiny_levels(bs=2):
    ratios = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.5, 0.75], [0.5, 1.0]]])[:bs]
    return MultiScaleLevels.from_shapes([(4, 4), (2, 2)], ratios, LevelIndex())


LAYER = dict(embed_dims=16, num_heads=2, num_levels=2, num_points=2, ffn_dims=32, dropout=0.0)


def logit(x):
    return torch.log(x / (1 - x))


def run_decoder(with_box_refine):
    """A 3-layer decoder with a random head; returns the head, the initial points, what every
    layer's cross-attention was given, every layer's output query and the predictions."""
    torch.manual_seed(0)
    decoder = DeformableDetrTransformerDecoder(num_layers=3, layer_cfg=LAYER)
    head = DeformableDETRHead(num_classes=3, embed_dims=16, num_layers=3,
                              with_box_refine=with_box_refine)
    for p in head.parameters():
        p.data.normal_(0, 0.1)
    seen, outputs = [], []
    for layer in decoder.layers:
        layer.cross_attn.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
        layer.register_forward_hook(lambda m, args, out: outputs.append(out))
    points = torch.rand(2, 5, 2)
    predictions = decoder(torch.randn(2, 5, 16), torch.randn(2, 5, 16), points,
                          torch.randn(2, 20, 16), tiny_levels(), head)
    return head, points, seen, outputs, predictions


def test_decoder_refines_with_detached_boxes_in_inverse_sigmoid_space():
    head, points, seen, outputs, predictions = run_decoder(with_box_refine=True)
    assert len(predictions) == 3
    reference = points
    for i, pred in enumerate(predictions):
        delta = head.reg_branches[i](outputs[i])  # written out: offset added in logit space
        if i == 0:  # a point reference: w and h predicted outright
            expected = torch.cat([delta[..., :2] + logit(reference), delta[..., 2:]], -1).sigmoid()
        else:
            expected = (delta + logit(reference)).sigmoid()
        torch.testing.assert_close(pred.boxes, expected)
        torch.testing.assert_close(pred.logits, head.cls_branches[i](outputs[i]))
        assert pred.boxes.requires_grad and not pred.next_reference.requires_grad
        torch.testing.assert_close(pred.next_reference, expected)
        reference = expected.detach()
    # the attention sees the references scaled by every level's valid ratio (w, h, w, h for boxes)
    ratios = tiny_levels().valid_ratios
    torch.testing.assert_close(seen[0], points[:, :, None] * ratios[:, None])
    torch.testing.assert_close(seen[2], predictions[1].boxes.detach()[:, :, None] *
                               ratios.repeat(1, 1, 2)[:, None])


def test_decoder_without_refinement_keeps_the_reference():
    _, points, seen, _, predictions = run_decoder(with_box_refine=False)
    assert all(pred.next_reference is points for pred in predictions)
    torch.testing.assert_close(seen[2], seen[0])


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
                    MultiScaleLevels.from_shapes([(2, 2), (1, 1)], torch.ones(1, 2, 2),
                                                 LevelIndex()))
    masks = [padded_mask((4, 4), [(2, 2)]), padded_mask((2, 2), [(1, 1)])]
    levels = MultiScaleLevels.from_shapes([(4, 4), (2, 2)], torch.full((1, 2, 2), 0.5),
                                          LevelIndex(), torch.cat([m.flatten(1) for m in masks], 1))
    padded = encoder(flat(pad(small)), flat(pad(small_pos)), levels)
    valid = ~levels.padding_mask[0]
    torch.testing.assert_close(padded[0, valid], alone[0], atol=1e-5, rtol=1e-5)
