"""RT-DETR decoder side with its head: query selection, layer-by-layer refinement (the rule
written out), look-forward-twice gradients, eval_idx."""
from collections import Counter

import pytest
import torch

from detr_plugin.models.dense_heads import RTDETRHead
from detr_plugin.models.layers.multi_scale import LevelAnchors
from detr_plugin.models.layers.rtdetr_decoder import RTDETRDecoder
from detr_plugin.testing import HostSyncRecorder, SyncSite


def tiny_decoder(num_layers=3, eval_idx=-1, num_queries=5):
    torch.manual_seed(0)
    dec = RTDETRDecoder(in_channels=(8, 8), embed_dims=16, num_queries=num_queries,
                        num_layers=num_layers, layer_cfg=dict(num_heads=2, num_points=2,
                                                             ffn_dims=32))
    head = RTDETRHead(num_classes=3, embed_dims=16, num_pred_layers=num_layers,
                      eval_idx=eval_idx)
    for p in head.parameters():  # away from the init's zero box deltas
        p.data.normal_(0, 0.3)
    return dec, head


def test_query_selection_takes_top_scores():
    dec, head = tiny_decoder()
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    memory, levels = dec.flatten_levels(feats)
    assert memory.shape == (2, 20, 16)
    assert levels.spatial_shapes.tolist() == [[4, 4], [2, 2]]
    assert levels.level_start_index.tolist() == [0, 16]
    sel = dec.select_queries(memory, levels, head)
    anchors, valid = LevelAnchors()(levels)
    with torch.no_grad():
        memory = dec.enc_output(memory * valid)
        scores = head.enc_cls_branch(memory)
    for b in range(2):  # brute force: sort every token's best class score
        order = sorted(range(20), key=lambda i: -scores[b, i].max().item())[:5]
        torch.testing.assert_close(sel.enc_logits[b], scores[b, order])
        torch.testing.assert_close(sel.query[b], memory[b, order])
        torch.testing.assert_close(sel.ref_boxes_unact[b], head.enc_reg_branch(memory[b, order]) +
                                   anchors[0, order])
    assert not sel.query.requires_grad and not sel.ref_boxes_unact.requires_grad
    assert sel.enc_logits.requires_grad and sel.enc_boxes.requires_grad
    torch.testing.assert_close(sel.enc_boxes, sel.ref_boxes_unact.sigmoid())


def test_training_returns_every_layer_and_eval_stops_at_eval_idx():
    dec, head = tiny_decoder(num_layers=3, eval_idx=1)
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    dec.input_proj.eval()  # BatchNorm with running statistics in both passes
    ran = []
    for i, layer in enumerate(dec.layers):
        layer.register_forward_hook(lambda m, args, out, i=i: ran.append(i))
    out = dec(feats, head)
    assert out.logits.shape == (3, 2, 5, 3) and out.boxes.shape == (3, 2, 5, 4)
    assert out.denoising is None and out.enc_logits.shape == (2, 5, 3)
    dec.eval()
    head.eval()
    ran.clear()
    with torch.no_grad():
        evaluated = dec(feats, head)
    assert ran == [0, 1] and evaluated.logits.shape == (1, 2, 5, 3)
    # dropout is 0: the eval output is the training output of layer eval_idx
    torch.testing.assert_close(evaluated.logits[0], out.logits[1].detach())
    torch.testing.assert_close(evaluated.boxes[0], out.boxes[1].detach())


def logit(x):
    return torch.log(x / (1 - x))


def test_refinement_in_inverse_sigmoid_space_and_gradient_reach():
    """Layer i's box is sigmoid(delta_i + logit(ref_i)) with ref_i the previous layer's box; its
    loss reaches box heads i and i - 1 (look forward twice) but not i - 2."""
    dec, head = tiny_decoder(num_layers=3)
    deltas = []
    for branch in head.reg_branches:
        branch.register_forward_hook(lambda m, i, o: deltas.append(o))
    memory, levels = dec.flatten_levels([torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2)])
    sel = dec.select_queries(memory, levels, head)
    predictions = dec.decode(sel.query, sel.ref_boxes_unact.sigmoid(), memory, levels, head)
    ref = sel.ref_boxes_unact.sigmoid()
    box = None
    for i, pred in enumerate(predictions):
        refined = (deltas[i] + logit(ref)).sigmoid()
        torch.testing.assert_close(pred.next_reference, refined.detach(), atol=1e-5, rtol=0)
        supervised = refined if i == 0 else (deltas[i] + logit(box)).sigmoid()
        torch.testing.assert_close(pred.boxes, supervised, atol=1e-5, rtol=0)
        box, ref = refined, refined.detach()
    predictions[2].boxes.sum().backward()
    grads = [branch.layers[-1].weight.grad for branch in head.reg_branches]
    assert grads[0] is None or grads[0].abs().max() == 0
    assert grads[1].abs().max() > 0 and grads[2].abs().max() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match='num_levels'):
        RTDETRDecoder(in_channels=(8, 8), layer_cfg=dict(num_levels=3))
    with pytest.raises(ValueError, match='eval_idx'):
        RTDETRHead(num_classes=3, num_pred_layers=3, eval_idx=3)
    dec = RTDETRDecoder(in_channels=(8, 8), embed_dims=16, num_layers=1,
                        layer_cfg=dict(num_heads=2))
    with pytest.raises(ValueError, match='feature levels'):
        dec.flatten_levels([torch.randn(1, 8, 4, 4)])


def test_fewer_encoder_tokens_than_queries_is_reported():
    dec, head = tiny_decoder()   # 5 queries
    memory, levels = dec.flatten_levels([torch.randn(2, 8, 2, 1), torch.randn(2, 8, 1, 1)])
    with pytest.raises(ValueError, match=r'num_queries=5 .* only 3 encoder tokens'):
        dec.select_queries(memory, levels, head)  # 3 tokens


def test_index_tensors_made_once_per_layout_and_never_read_back():
    """The first forward of a layout copies its index tensors to the device once; later ones
    reuse the same tensors, and no forward reads a tensor back to the host: the MSDA op gets the
    level sizes from the host (no wait for the GPU; CUDA graph capture)."""
    dec, head = tiny_decoder()
    dec.eval()
    head.eval()
    feats = [torch.randn(1, 8, 3, 5), torch.randn(1, 8, 2, 3)]
    seen = []
    dec.layers[0].cross_attn.register_forward_pre_hook(lambda m, args: seen.append(args[3:]))
    with torch.no_grad():
        with HostSyncRecorder(dec, head) as first:
            dec(feats, head)
        with HostSyncRecorder(dec, head) as again:
            dec(feats, head)
    made = SyncSite('copy to device', 'detr_plugin/models/layers/multi_scale.py:level_index')
    assert first.sites == Counter({made: 1}), first.report()
    assert again.sites == Counter(), again.report()
    # (spatial_shapes, level_start_index, padding_mask, shapes)
    assert seen[1][0] is seen[0][0] and seen[1][1] is seen[0][1]
    assert seen[0][3] == seen[1][3] == ((3, 5), (2, 3))
