import math

import pytest
import torch

from detr_plugin.models.layers.box_distribution import (boxes_to_bins, distances_to_boxes,
                                                        distribution_to_distances,
                                                        weighting_function)

F64 = torch.float64


def _paper_w(reg_max, up, reg_scale):
    """W(n) written out from the paper's formula, one Python float per bin."""
    c = up * reg_scale
    step = (c + 1) ** (2 / (reg_max - 2))
    half = reg_max // 2
    w = []
    for n in range(reg_max + 1):
        if n == 0:
            w.append(-2 * c)
        elif n == reg_max:
            w.append(2 * c)
        elif n < half:
            w.append(1 - step ** (half - n))
        else:
            w.append(step ** (n - half) - 1)
    return torch.tensor(w, dtype=F64)


def _w(reg_max=32, up=0.5, reg_scale=4.0, dtype=F64):
    return weighting_function(reg_max, torch.tensor([up], dtype=dtype),
                              torch.tensor([reg_scale], dtype=dtype))


def test_weighting_function_matches_paper_formula():
    w = _w()
    assert w.shape == (33,) and w.dtype == F64
    torch.testing.assert_close(w, _paper_w(32, 0.5, 4.0), rtol=0, atol=1e-15)
    # By hand: c = up * reg_scale = 2, step = 3 ** (1 / 15) = 1.0759896247...
    assert w[0].item() == -4.0 and w[32].item() == 4.0 and w[16].item() == 0.0
    assert w[17].item() == pytest.approx(0.0759896247, abs=1e-10)
    assert w[24].item() == pytest.approx(0.7966549124, abs=1e-10)   # 3 ** (8 / 15) - 1
    assert w[31].item() == pytest.approx(2.0, abs=1e-12)             # 3 ** (15 / 15) - 1
    assert w[1].item() == pytest.approx(-2.0, abs=1e-12)


def test_weighting_function_symmetric_monotone_other_params():
    for reg_max, up, reg_scale in [(32, 0.5, 4.0), (16, 0.3, 8.0), (4, 1.0, 1.0)]:
        w = _w(reg_max, up, reg_scale)
        assert w.shape == (reg_max + 1,)
        torch.testing.assert_close(w, -w.flip(0), rtol=0, atol=0)
        assert (w[1:] > w[:-1]).all()
        assert w[-1].item() == pytest.approx(2 * up * reg_scale)
        torch.testing.assert_close(w, _paper_w(reg_max, up, reg_scale), rtol=0, atol=1e-14)
    # negative up / reg_scale enter through their absolute values, as in the original
    torch.testing.assert_close(_w(32, -0.5, -4.0), _w(32, 0.5, 4.0))


def test_weighting_function_dtype_device_and_gradient():
    w32 = _w(dtype=torch.float32)
    assert w32.dtype == torch.float32
    up = torch.tensor([0.5], dtype=F64, requires_grad=True)
    scale = torch.tensor([4.0], dtype=F64, requires_grad=True)
    weighting_function(32, up, scale)[0].backward()
    # W(0) = -2 * up * reg_scale
    assert up.grad.item() == pytest.approx(-8.0) and scale.grad.item() == pytest.approx(-1.0)
    assert torch.autograd.gradcheck(lambda u, s: weighting_function(8, u, s), (up, scale))


@pytest.mark.parametrize('reg_max', [3, 2, 7])
def test_weighting_function_rejects_bad_reg_max(reg_max):
    with pytest.raises(ValueError, match='reg_max'):
        _w(reg_max)


def test_distribution_to_distances_matches_naive_loop():
    torch.manual_seed(0)
    reg_max = 8
    w = _w(reg_max)
    corners = torch.randn(2, 3, 4 * (reg_max + 1), dtype=F64) * 3
    out = distribution_to_distances(corners, w)
    assert out.shape == (2, 3, 4)
    for b in range(2):
        for q in range(3):
            for e in range(4):
                logits = corners[b, q, e * (reg_max + 1):(e + 1) * (reg_max + 1)].tolist()
                z = sum(math.exp(x) for x in logits)
                expected = sum(math.exp(x) / z * w[n].item() for n, x in enumerate(logits))
                assert out[b, q, e].item() == pytest.approx(expected, abs=1e-12)
    # uniform logits: the mean of an antisymmetric W is 0
    zero = distribution_to_distances(torch.zeros(5, 4 * (reg_max + 1), dtype=F64), w)
    torch.testing.assert_close(zero, torch.zeros(5, 4, dtype=F64), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match='corners'):
        distribution_to_distances(torch.zeros(5, 4 * reg_max), w)


def test_distances_to_boxes_hand_case():
    ref = torch.tensor([[0.5, 0.5, 0.4, 0.2]], dtype=F64)
    scale = torch.tensor([4.0], dtype=F64)
    # unit = (0.1, 0.05): x0 = 0.5 - 3 * 0.1, x1 = 0.5 + 1 * 0.1, y0 = 0.5 - 2 * 0.05,
    # y1 = 0.5 + 4 * 0.05 -> xyxy (0.2, 0.4, 0.6, 0.7) -> cxcywh (0.4, 0.55, 0.4, 0.3)
    out = distances_to_boxes(ref, torch.tensor([[1.0, 0.0, -1.0, 2.0]], dtype=F64), scale)
    torch.testing.assert_close(out, torch.tensor([[0.4, 0.55, 0.4, 0.3]], dtype=F64))
    # zero offsets give the reference back; negative reg_scale enters as its absolute value
    same = distances_to_boxes(ref[None], torch.zeros(1, 1, 4, dtype=F64), -scale)
    torch.testing.assert_close(same, ref[None])


@pytest.mark.parametrize('dtype', [torch.float32, F64])
def test_distances_to_boxes_is_bitwise_the_per_edge_formula(dtype):
    """Each edge as the original's distance2bbox writes it, then xyxy -> cxcywh."""
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 50, 4, generator=g, dtype=dtype) * 0.5 + 0.1
    distances = torch.randn(2, 50, 4, generator=g, dtype=dtype) * 3
    scale = torch.tensor([-4.0], dtype=dtype)
    s = scale.abs()
    x0 = ref[..., 0] - (0.5 * s + distances[..., 0]) * (ref[..., 2] / s)
    y0 = ref[..., 1] - (0.5 * s + distances[..., 1]) * (ref[..., 3] / s)
    x1 = ref[..., 0] + (0.5 * s + distances[..., 2]) * (ref[..., 2] / s)
    y1 = ref[..., 1] + (0.5 * s + distances[..., 3]) * (ref[..., 3] / s)
    expected = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)
    out = distances_to_boxes(ref, distances, scale)
    assert torch.equal(out, expected)


def _edge_case(offsets):
    """Reference centred at 0 with one W unit = 4 (exact: 4 + 1e-16 == 4); gt edges at offsets."""
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]], dtype=F64)
    l, t, r, b = offsets
    gt = torch.tensor([[-(2 + l) * 4, -(2 + t) * 4, (2 + r) * 4, (2 + b) * 4]], dtype=F64)
    return ref, gt


def _bins(ref, gt, reg_max=32, eps=0.1):
    return boxes_to_bins(ref, gt, _w(reg_max), torch.tensor([4.0], dtype=F64), eps)


def test_boxes_to_bins_hand_cases():
    w = _w()
    d17 = w[17].item()  # 0.0759896247...
    # left on W(16) = 0, top on W(0) = -4, right a quarter of the way from W(16) to W(17),
    # bottom on W(32) = 4 (the top end counts as beyond it, as in the original)
    ref, gt = _edge_case([0.0, -4.0, 0.25 * d17, 4.0])
    bins = _bins(ref, gt)
    torch.testing.assert_close(bins.index, torch.tensor([16.0, 0.0, 16.0, 31.9], dtype=F64))
    torch.testing.assert_close(bins.weight_right, torch.tensor([0.0, 0.0, 0.25, 1.0], dtype=F64))
    torch.testing.assert_close(bins.weight_left, torch.tensor([1.0, 1.0, 0.75, 0.0], dtype=F64))

    # beyond both ends, and between W(0) = -4 and W(1) = -2 (weights 0.25 / 0.75 at -3.5)
    ref, gt = _edge_case([-5.0, 6.0, -3.5, 100.0])
    bins = _bins(ref, gt, eps=0.5)
    w1 = w[1].item()
    expected_right = (-3.5 + 4.0) / (w1 + 4.0)  # 0.25 up to W(1)'s rounding
    assert expected_right == pytest.approx(0.25, abs=1e-12)
    torch.testing.assert_close(bins.index, torch.tensor([0.0, 31.5, 0.0, 31.5], dtype=F64))
    torch.testing.assert_close(bins.weight_right,
                               torch.tensor([0.0, 1.0, expected_right, 1.0], dtype=F64))
    torch.testing.assert_close(bins.weight_left,
                               torch.tensor([1.0, 0.0, 1 - expected_right, 0.0], dtype=F64))


def test_boxes_to_bins_box_major_order_and_no_grad():
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 16.0, 16.0]], dtype=F64,
                       requires_grad=True)
    gt = torch.tensor([[-8.0, -24.0, 8.0, 24.0], [-8.0, -8.0, 8.0, 8.0]], dtype=F64)
    bins = _bins(ref, gt)
    # box 0: offsets (0, 4, 0, 4) -> bins 16, 31.9, 16, 31.9; box 1: all 16
    torch.testing.assert_close(bins.index, torch.tensor([16, 31.9, 16, 31.9, 16, 16, 16, 16],
                                                        dtype=F64))
    assert not bins.index.requires_grad and not bins.weight_right.requires_grad


def test_decoding_two_bin_targets_recovers_the_box():
    torch.manual_seed(1)
    reg_max = 32
    up, scale = torch.tensor([0.5], dtype=F64), torch.tensor([4.0], dtype=F64)
    w = weighting_function(reg_max, up, scale)
    ref = torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.05]], dtype=F64)
    offsets = (torch.rand(2, 4, dtype=F64) * 7.6 - 3.8)  # inside (W(0), W(32))
    gt_cxcywh = distances_to_boxes(ref, offsets, scale)
    centre, half = gt_cxcywh[:, :2], gt_cxcywh[:, 2:] / 2
    gt = torch.cat([centre - half, centre + half], 1)
    bins = boxes_to_bins(ref, gt, w, scale)
    left = bins.index.long()
    assert (w[left] <= offsets.reshape(-1) + 1e-12).all()
    assert (w[left + 1] > offsets.reshape(-1) - 1e-12).all()
    probs = torch.zeros(8, reg_max + 1, dtype=F64)
    probs[torch.arange(8), left] = bins.weight_left
    probs[torch.arange(8), left + 1] += bins.weight_right
    corners = probs.log().reshape(2, 4 * (reg_max + 1))  # softmax(log p) == p
    decoded = distribution_to_distances(corners, w)
    torch.testing.assert_close(decoded, offsets, rtol=0, atol=1e-9)
    torch.testing.assert_close(distances_to_boxes(ref, decoded, scale), gt_cxcywh, rtol=0,
                               atol=1e-9)


def _previous_boxes_to_bins(reference, boxes_xyxy, reg_max, reg_scale, up, eps=0.1):
    """The earlier implementation (per-edge stack, where-based weights), kept as the reference
    of the fused one."""
    scale = reg_scale.abs()
    centre, size = reference[:, :2], reference[:, 2:]
    unit = size / scale + 1e-16
    near = (centre - boxes_xyxy[:, :2]) / unit - 0.5 * scale
    far = (boxes_xyxy[:, 2:] - centre) / unit - 0.5 * scale
    offsets = torch.stack([near[:, 0], near[:, 1], far[:, 0], far[:, 1]], -1).reshape(-1)
    values = weighting_function(reg_max, up, reg_scale)
    left = (values[None, :] <= offsets[:, None]).sum(1) - 1
    inside = (left >= 0) & (left < reg_max)
    safe = left.clamp(0, reg_max - 1)
    to_left = (offsets - values[safe]).abs()
    to_right = (values[safe + 1] - offsets).abs()
    interp_right = to_left / (to_left + to_right)
    weight_right = torch.where(inside, interp_right, (left >= reg_max).to(offsets.dtype))
    weight_left = torch.where(inside, 1 - interp_right, (left < 0).to(offsets.dtype))
    index = torch.where(left >= reg_max, torch.full_like(offsets, reg_max - 0.1),
                        left.clamp(min=0).to(offsets.dtype))
    return index.clamp(0, reg_max - eps), weight_right, weight_left


@pytest.mark.parametrize('dtype', [torch.float32, F64])
@pytest.mark.parametrize('reg_max,eps', [(32, 0.1), (8, 0.5)])
def test_boxes_to_bins_bitwise_the_previous_implementation(dtype, reg_max, eps):
    g = torch.Generator().manual_seed(0)
    ref = torch.cat([torch.rand(200, 2, generator=g), torch.rand(200, 2, generator=g) * 0.5
                     + 0.01], 1).to(dtype)
    centre, half = ref[:, :2], ref[:, 2:] / 2
    # gt edges from far inside to far outside the W range (|W| <= 4 units of size / 4)
    spread = (torch.rand(200, 4, generator=g) * 6 - 1.5).to(dtype)
    gt = torch.cat([centre - half * spread[:, :2], centre + half * spread[:, 2:]], 1)
    up, scale = torch.tensor([0.5], dtype=dtype), torch.tensor([4.0], dtype=dtype)
    w = weighting_function(reg_max, up, scale)
    # edges exactly on bins, at both ends and beyond them: offset d -> edge at centre -+ ...
    exact = torch.cat([w, w[:1] - 1, w[-1:] + 1])[:, None].expand(-1, 4)
    ref_exact = torch.tensor([[0.0, 0.0, 16.0, 16.0]], dtype=dtype).expand(len(exact), 4)
    gt_exact = torch.cat([-(2 + exact[:, :2]) * 4, (2 + exact[:, 2:]) * 4], 1)
    ref, gt = torch.cat([ref, ref_exact]), torch.cat([gt, gt_exact])
    ours = boxes_to_bins(ref, gt, w, scale, eps)
    expected = _previous_boxes_to_bins(ref, gt, reg_max, scale, up, eps)
    assert ours.weight_left.dtype == dtype
    for got, want in zip(ours, expected):
        assert torch.equal(got, want)
    # every case occurs: below W(0), above W(reg_max), on a bin, strictly between two
    assert (ours.weight_left == 1).any() and (ours.weight_right == 1).any()
    assert ((ours.weight_right > 0) & (ours.weight_right < 1)).any()
