import math

import pytest
import torch

from detr_plugin.models.layers import LearnedPositionalEncoding, SinePositionalEncoding


def expected_sine(mask, num_feats, offset=0., temperature=10000., eps=1e-6):
    """The formula of DETR's Sec. A.4 written out pixel by pixel (float64)."""
    bs, h, w = mask.shape
    out = torch.zeros(bs, 2 * num_feats, h, w, dtype=torch.float64)
    for b in range(bs):
        valid_h = int((~mask[b, :, 0]).sum())
        valid_w = int((~mask[b, 0, :]).sum())
        for i in range(h):
            for j in range(w):
                y = (min(i + 1, valid_h) + offset) / (valid_h + eps) * 2 * math.pi
                x = (min(j + 1, valid_w) + offset) / (valid_w + eps) * 2 * math.pi
                for k in range(num_feats):
                    freq = temperature ** (2 * (k // 2) / num_feats)
                    f = math.sin if k % 2 == 0 else math.cos
                    out[b, k, i, j] = f(y / freq)
                    out[b, num_feats + k, i, j] = f(x / freq)
    return out


@pytest.mark.parametrize('offset', [0., -0.5])
def test_sine_encoding_matches_formula(offset):
    mask = torch.zeros(2, 5, 6, dtype=torch.bool)
    mask[1, 3:, :] = True   # image 1 is 3 x 4 inside a 5 x 6 batch
    mask[1, :, 4:] = True
    pos = SinePositionalEncoding(num_feats=8, offset=offset)(mask)
    assert pos.shape == (2, 16, 5, 6)
    ref = expected_sine(mask, 8, offset)
    valid = ~mask[:, None].expand_as(pos)
    torch.testing.assert_close(pos.double()[valid], ref[valid], atol=1e-5, rtol=1e-5)


def test_sine_encoding_y_half_first_and_unnormalized():
    mask = torch.zeros(1, 2, 3, dtype=torch.bool)
    pos = SinePositionalEncoding(num_feats=4, normalize=False)(mask)
    # unnormalized positions are the 1-based row / column counts; feature 0 is sin(pos / 1)
    assert torch.allclose(pos[0, 0, :, 0], torch.sin(torch.tensor([1., 2.])))
    assert torch.allclose(pos[0, 4, 0, :], torch.sin(torch.tensor([1., 2., 3.])))
    assert torch.allclose(pos[0, 1, 1, 0], torch.cos(torch.tensor(2.)))


def test_sine_encoding_rejects_bad_mask():
    with pytest.raises(ValueError, match='mask'):
        SinePositionalEncoding()(torch.zeros(4, 4, dtype=torch.bool))


def test_learned_encoding_layout():
    enc = LearnedPositionalEncoding(num_feats=4, row_num_embed=5, col_num_embed=6)
    pos = enc(torch.zeros(2, 3, 4, dtype=torch.bool))
    assert pos.shape == (2, 8, 3, 4)
    # x (column) features first, then y (row) features
    assert torch.equal(pos[0, :4, 2, 3], enc.col_embed.weight[3])
    assert torch.equal(pos[1, 4:, 2, 3], enc.row_embed.weight[2])
    with pytest.raises(ValueError, match='exceeds'):
        enc(torch.zeros(1, 6, 2, dtype=torch.bool))
