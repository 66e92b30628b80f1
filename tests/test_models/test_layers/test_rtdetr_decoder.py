"""RT-DETR decoder side: anchors, query selection, layer-by-layer refinement, eval_idx."""
import math

import pytest
import torch
from torch import nn

from detr_plugin.models.layers import MLP
from detr_plugin.models.layers.rtdetr_decoder import RTDETRDecoder, generate_anchors


def test_anchors_and_valid_mask_by_hand():
    anchors, valid = generate_anchors([(2, 3), (1, 1)], grid_size=0.05, eps=0.01)
    assert anchors.shape == (1, 7, 4) and valid.shape == (1, 7, 1)
    # level 0, row 1, column 2: centre ((2 + .5) / 3, (1 + .5) / 2), side 0.05
    cx, cy, side = 2.5 / 3, 1.5 / 2, 0.05
    expected = [math.log(v / (1 - v)) for v in (cx, cy, side, side)]
    torch.testing.assert_close(anchors[0, 5], torch.tensor(expected))
    # level 1: one pixel, centre (0.5, 0.5), side 0.1
    torch.testing.assert_close(anchors[0, 6], torch.tensor([0., 0., math.log(.1 / .9)] * 1 +
                                                           [math.log(.1 / .9)]))
    assert valid.all()


def test_anchors_outside_margin_are_invalid_and_infinite():
    # an 80-wide level: centres 0.5 / 80 = 0.00625 < 0.01 on the first and last column
    anchors, valid = generate_anchors([(1, 80)], grid_size=0.05, eps=0.01)
    expected_valid = torch.ones(80, dtype=torch.bool)
    expected_valid[[0, 79]] = False
    assert torch.equal(valid[0, :, 0], expected_valid)
    assert torch.isinf(anchors[0, ~expected_valid]).all()
    assert torch.isfinite(anchors[0, expected_valid]).all()
    # the anchors of level 5 are too large (0.05 * 2^5 = 1.6 > 0.99); level 4's are 0.8
    _, valid = generate_anchors([(1, 1)] * 6, grid_size=0.05, eps=0.01)
    assert valid[0, :, 0].tolist() == [True] * 5 + [False]


def tiny_decoder(num_layers=3, eval_idx=-1, num_queries=5):
    torch.manual_seed(0)
    dec = RTDETRDecoder(in_channels=(8, 8), embed_dims=16, num_queries=num_queries,
                        num_layers=num_layers, layer_cfg=dict(num_heads=2, num_points=2,
                                                             ffn_dims=32),
                        eval_idx=eval_idx)
    cls_heads = nn.ModuleList(nn.Linear(16, 3) for _ in range(num_layers))
    box_heads = nn.ModuleList(MLP(16, 16, 4, 2) for _ in range(num_layers))
    return dec, cls_heads, box_heads, nn.Linear(16, 3), MLP(16, 16, 4, 2)


def test_query_selection_takes_top_scores():
    dec, _, _, enc_cls, enc_box = tiny_decoder()
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    flat = dec.flatten_levels(feats)
    assert flat.memory.shape == (2, 20, 16)
    assert flat.spatial_shapes.tolist() == [[4, 4], [2, 2]]
    assert flat.level_start_index.tolist() == [0, 16]
    sel = dec.select_queries(flat, enc_cls, enc_box)
    anchors, valid = generate_anchors([(4, 4), (2, 2)])
    with torch.no_grad():
        memory = dec.enc_output(flat.memory * valid)
        scores = enc_cls(memory)
    for b in range(2):  # brute force: sort every token's best class score
        order = sorted(range(20), key=lambda i: -scores[b, i].max().item())[:5]
        torch.testing.assert_close(sel.enc_logits[b], scores[b, order])
        torch.testing.assert_close(sel.query[b], memory[b, order])
        torch.testing.assert_close(sel.ref_boxes_unact[b], enc_box(memory[b, order]) +
                                   anchors[0, order])
    assert not sel.query.requires_grad and not sel.ref_boxes_unact.requires_grad
    assert sel.enc_logits.requires_grad and sel.enc_boxes.requires_grad
    torch.testing.assert_close(sel.enc_boxes, sel.ref_boxes_unact.sigmoid())


def test_training_returns_every_layer_and_eval_stops_at_eval_idx():
    dec, cls_heads, box_heads, enc_cls, enc_box = tiny_decoder(num_layers=3, eval_idx=1)
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    dec.input_proj.eval()  # BatchNorm with running statistics in both passes
    out = dec(feats, cls_heads, box_heads, enc_cls, enc_box)
    assert out.logits.shape == (3, 2, 5, 3) and out.boxes.shape == (3, 2, 5, 4)
    assert out.dn_logits is None
    dec.eval()
    with torch.no_grad():
        evaluated = dec(feats, cls_heads, box_heads, enc_cls, enc_box)
    assert evaluated.logits.shape == (1, 2, 5, 3)
    # dropout is 0: the eval output is the training output of layer eval_idx
    torch.testing.assert_close(evaluated.logits[0], out.logits[1].detach())
    torch.testing.assert_close(evaluated.boxes[0], out.boxes[1].detach())


def test_refinement_in_inverse_sigmoid_space_and_gradient_reach():
    """Layer i's box is sigmoid(delta_i + logit(ref_i)) with ref_i the previous layer's box; its
    loss reaches box heads i and i - 1 (look forward twice) but not i - 2."""
    dec, cls_heads, box_heads, enc_cls, enc_box = tiny_decoder(num_layers=3)
    deltas = []
    for head in box_heads:
        head.register_forward_hook(lambda m, i, o: deltas.append(o))
    feats = [torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2)]
    flat = dec.flatten_levels(feats)
    sel = dec.select_queries(flat, enc_cls, enc_box)
    _, boxes = dec.decode(sel.query, sel.ref_boxes_unact, flat, cls_heads, box_heads)
    ref = sel.ref_boxes_unact.sigmoid()
    for i in range(3):
        logit = torch.log(ref / (1 - ref))
        torch.testing.assert_close(boxes[i], (deltas[i] + logit).sigmoid(), atol=1e-5, rtol=0)
        ref = boxes[i].detach()
    boxes[2].sum().backward()
    grads = [head.layers[-1].weight.grad for head in box_heads]
    assert grads[0] is None or grads[0].abs().max() == 0
    assert grads[1].abs().max() > 0 and grads[2].abs().max() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match='num_levels'):
        RTDETRDecoder(in_channels=(8, 8), layer_cfg=dict(num_levels=3))
    with pytest.raises(ValueError, match='eval_idx'):
        RTDETRDecoder(num_layers=3, eval_idx=3)
    dec = RTDETRDecoder(in_channels=(8, 8), embed_dims=16, num_layers=1,
                        layer_cfg=dict(num_heads=2))
    with pytest.raises(ValueError, match='feature levels'):
        dec.flatten_levels([torch.randn(1, 8, 4, 4)])


def test_fewer_encoder_tokens_than_queries_is_reported():
    dec, _, _, enc_cls, enc_box = tiny_decoder()   # 5 queries
    flat = dec.flatten_levels([torch.randn(2, 8, 2, 1), torch.randn(2, 8, 1, 1)])  # 3 tokens
    with pytest.raises(ValueError, match=r'num_queries=5 .* only 3 encoder tokens'):
        dec.select_queries(flat, enc_cls, enc_box)
