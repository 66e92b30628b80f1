"""Contrastive denoising groups: counts, attention mask, noise bounds, positives, empty images."""
import pytest
import torch
from mmdet.models.layers import inverse_sigmoid

from detr_plugin.models.layers.denoising import (EMPTY_BATCH_BOX, ContrastiveDenoising,
                                                 clamped_inverse_sigmoid, denoising_attn_mask)


def naive_mask(max_gts, num_groups, num_queries):
    """True = blocked, written as a double loop over (query, key)."""
    num_dn = 2 * max_gts * num_groups
    size = num_dn + num_queries
    mask = torch.zeros(size, size, dtype=torch.bool)
    for q in range(size):
        for k in range(size):
            if k >= num_dn:
                continue  # everyone sees the matching queries
            if q >= num_dn:
                mask[q, k] = True  # matching queries never see denoising ones
            elif q // (2 * max_gts) != k // (2 * max_gts):
                mask[q, k] = True  # other groups are hidden
    return mask


@pytest.mark.parametrize('max_gts,num_groups,num_queries', [(1, 1, 3), (2, 3, 4), (3, 1, 5)])
def test_attn_mask_matches_loop(max_gts, num_groups, num_queries):
    assert torch.equal(denoising_attn_mask(max_gts, num_groups, num_queries),
                       naive_mask(max_gts, num_groups, num_queries))


def boxes_cxcywh(*boxes):
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def test_counts_positives_and_padding():
    torch.manual_seed(0)
    dn = ContrastiveDenoising(num_classes=5, embed_dims=8, num_denoising=10,
                              label_noise_ratio=0.0, box_noise_scale=0.0)
    labels = [torch.tensor([1, 4, 2]), torch.tensor([3]), torch.zeros(0, dtype=torch.long)]
    boxes = [boxes_cxcywh([.5, .5, .2, .2], [.3, .3, .1, .2], [.7, .6, .3, .1]),
             boxes_cxcywh([.4, .4, .4, .4]), boxes_cxcywh()]
    g = dn(labels, boxes, num_queries=7)
    # M = 3 gts at most -> 10 // 3 = 3 groups of 6 queries
    assert g.num_groups == 3
    assert g.query.shape == (3, 18, 8) and g.ref_boxes_unact.shape == (3, 18, 4)
    assert g.attn_mask.shape == (25, 25)
    # positives: image 0 queries g*6 + j (j < 3); image 1 queries g*6 + 0; image 2 none
    expected_pred = [0, 1, 2, 6, 7, 8, 12, 13, 14] + [18 + 0, 18 + 6, 18 + 12]
    assert g.pred_index.tolist() == expected_pred
    assert g.gt_index.tolist() == [0, 1, 2] * 3 + [3, 3, 3]
    # without noise, boxes are the gts (padding: the zero box), queries their label embeddings
    ref = g.ref_boxes_unact.sigmoid()
    torch.testing.assert_close(ref[0, 6:9], boxes[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(ref[1, 15], boxes[1][0], atol=1e-5, rtol=0)  # the negative copy
    assert (ref[2] < 1e-4).all()
    emb = dn.label_embed.weight
    torch.testing.assert_close(g.query[0, 3:6], emb[labels[0]])
    assert (g.query[2] == 0).all()  # padding row of the embedding
    assert (g.query[1, 1:3] == 0).all()


def test_batch_without_any_gt_still_builds_one_group():
    dn = ContrastiveDenoising(num_classes=5, embed_dims=8, num_denoising=100)
    empty = [torch.zeros(0, dtype=torch.long)] * 2
    g = dn(empty, [boxes_cxcywh()] * 2, num_queries=4)
    assert g.num_groups == 1 and g.query.shape == (2, 2, 8)
    assert g.pred_index.numel() == 0 and g.gt_index.numel() == 0
    assert (g.query == 0).all()
    assert torch.isfinite(g.ref_boxes_unact).all()
    # the placeholder box, noised: centre within the box's extent
    centres = g.ref_boxes_unact.sigmoid()[..., :2]
    assert ((centres - EMPTY_BATCH_BOX[0]).abs() <= EMPTY_BATCH_BOX[2] + 1e-6).all()
    assert torch.equal(g.attn_mask, naive_mask(1, 1, 4))


def test_box_noise_bounds():
    """Each corner moves by less than half the side (positives) or between half and one side
    (negatives), per axis; clipped to the image."""
    torch.manual_seed(1)
    dn = ContrastiveDenoising(num_classes=3, embed_dims=4, num_denoising=200, box_noise_scale=1.0)
    gt = boxes_cxcywh([.5, .5, .2, .3], [.4, .6, .1, .1])
    g = dn([torch.tensor([0, 1])], [gt], num_queries=1)
    noised = g.ref_boxes_unact.sigmoid()[0].double()  # (D, 4)
    cx, cy, w, h = noised.unbind(-1)
    corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    gcx, gcy, gw, gh = gt.double().repeat(2 * g.num_groups, 1).unbind(-1)
    gt_corners = torch.stack([gcx - gw / 2, gcy - gh / 2, gcx + gw / 2, gcy + gh / 2], -1)
    half = torch.stack([gw, gh, gw, gh], -1) / 2
    moved = (corners - gt_corners).abs() / half  # in units of the half side
    negative = (torch.arange(len(noised)) // 2) % 2 == 1
    eps = 1e-3  # float32 logit round trip
    assert (moved[~negative] < 1 + eps).all()
    assert (moved[negative] < 2 + eps).all()
    # negatives move by at least half a side, unless clipped at the image border or the corners
    # crossed (then the width or height is negative, clamped to ~0 by the inverse sigmoid)
    clipped = (corners <= 1e-4) | (corners >= 1 - 1e-4)
    collapsed = ((w < 1e-4) | (h < 1e-4))[:, None].expand(-1, 4)
    exempt = clipped | collapsed
    assert (moved[negative][~exempt[negative]] > 1 - eps).all()
    assert not collapsed[~negative].any()  # positives cannot cross: they move < half a side
    assert moved[~negative].max() > 0.5 and moved[negative].max() > 1.5  # noise is not trivial


def test_label_noise_rate_and_range():
    torch.manual_seed(2)
    dn = ContrastiveDenoising(num_classes=4, embed_dims=4, num_denoising=4000,
                              label_noise_ratio=0.5, box_noise_scale=0.0)
    labels = torch.tensor([3])
    g = dn([labels], [boxes_cxcywh([.5, .5, .2, .2])], num_queries=1)
    emb = dn.label_embed.weight  # (5, 4): recover each query's label from its embedding
    chosen = (g.query[0, :, None, :] == emb[None]).all(-1).float().argmax(-1)  # (D,)
    changed = (chosen != 3).float().mean().item()
    # a label is redrawn with p = 0.25, and a redraw lands on another class with p = 3/4
    assert abs(changed - 0.25 * 0.75) < 0.03
    assert chosen.max() < 4  # never the padding class


def test_rejects_non_positive_num_denoising():
    with pytest.raises(ValueError, match='num_denoising'):
        ContrastiveDenoising(num_classes=3, num_denoising=0)


def positive_indices_by_loop(num_gts, max_gts, num_groups):
    """Image by image, group by group, gt by gt."""
    pred, gt, start = [], [], 0
    for b, n in enumerate(num_gts):
        for g in range(num_groups):
            for j in range(n):
                pred.append(b * 2 * max_gts * num_groups + g * 2 * max_gts + j)
                gt.append(start + j)
        start += n
    return pred, gt


@pytest.mark.parametrize('num_gts, num_groups', [([3, 0, 1, 3], 4), ([0, 0], 1), ([1], 1),
                                                 ([2, 5, 0], 3), ([0, 4], 2)])
def test_positive_indices_match_loop(num_gts, num_groups):
    max_gts = max(max(num_gts), 1)
    real = torch.tensor([[j < n for j in range(max_gts)] for n in num_gts])
    pred, gt = ContrastiveDenoising._positive_indices(real, sum(num_gts), num_groups)
    expected_pred, expected_gt = positive_indices_by_loop(num_gts, max_gts, num_groups)
    assert pred.tolist() == expected_pred and gt.tolist() == expected_gt
    assert pred.dtype == gt.dtype == torch.long


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_clamped_inverse_sigmoid_is_mmdets(dtype):
    x = torch.cat([torch.tensor([-1.0, -1e-7, 0.0, 1e-6, 1e-5, 0.5, 1 - 1e-6, 1.0, 1.5]),
                   torch.rand(200, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2])
    x = x.to(dtype)
    assert torch.equal(clamped_inverse_sigmoid(x, 1e-5), inverse_sigmoid(x, eps=1e-5))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_gpu_positive_indices_match_loop_without_synchronising():
    num_gts, num_groups, max_gts = [3, 0, 1, 3], 4, 3
    real = torch.tensor([[j < n for j in range(max_gts)] for n in num_gts], device='cuda')
    torch.cuda.set_sync_debug_mode('error')  # any synchronising CUDA call raises
    try:
        pred, gt = ContrastiveDenoising._positive_indices(real, sum(num_gts), num_groups)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    expected_pred, expected_gt = positive_indices_by_loop(num_gts, max_gts, num_groups)
    assert pred.tolist() == expected_pred and gt.tolist() == expected_gt
