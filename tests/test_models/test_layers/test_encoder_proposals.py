"""Two-stage proposals against hand computations: the per-pixel boxes and which ones are masked, the
box sine embedding, and which half of the query projection is positional."""
import math

import torch

from detr_plugin.models.layers import EncoderProposals, LevelIndex, MultiScaleLevels
from detr_plugin.models.layers.encoder_proposals import box_sine_embedding


def test_invalid_proposals_are_infinite_and_read_zero_memory():
    """Image 1 is padded (level 0: 3 of 4 columns, level 1: 1 of 2). On the 60-wide level 2 the
    first and last centres, 0.5 / 60 and 59.5 / 60, fall outside (0.01, 0.99)."""
    torch.manual_seed(0)
    shapes = [(1, 4), (1, 2), (1, 60)]
    ratios = torch.tensor([[[1.0, 1.0]] * 3, [[0.75, 1.0], [0.5, 1.0], [1.0, 1.0]]])
    mask = torch.zeros(2, 66, dtype=torch.bool)
    mask[1, 3] = mask[1, 5] = True  # the padded columns of image 1
    # padding centres lie beyond 1 anyway; a masked token in the valid range tests the mask itself
    mask[0, 1] = True
    levels = MultiScaleLevels.from_shapes(shapes, ratios, LevelIndex(), mask)
    assert levels.level_start_index.tolist() == [0, 4, 6]
    module = EncoderProposals(embed_dims=8)
    memory = torch.randn(2, 66, 8)
    features, boxes = module(memory, levels)

    for b in range(2):
        valid_w = [4 * ratios[b, 0, 0].item(), 2 * ratios[b, 1, 0].item(), 60]
        token = 0
        for lvl, (w, vw) in enumerate(zip([4, 2, 60], valid_w)):
            for j in range(w):
                box = [(j + 0.5) / vw, 0.5, 0.05 * 2**lvl, 0.05 * 2**lvl]
                ok = all(0.01 < v < 0.99 for v in box) and not mask[b, token]
                if ok:
                    expected = torch.tensor([math.log(v / (1 - v)) for v in box])
                    torch.testing.assert_close(boxes[b, token], expected)
                    torch.testing.assert_close(
                        features[b, token], module.memory_norm(module.memory_proj(memory[b, token])))
                else:
                    assert torch.isinf(boxes[b, token]).all() and (boxes[b, token] > 0).all()
                    torch.testing.assert_close(
                        features[b, token], module.memory_norm(module.memory_proj.bias))
                token += 1
    assert torch.isinf(boxes[0, 1]).all() and not torch.isinf(boxes[1, 1]).any()


def test_box_sine_embedding_by_hand():
    boxes = torch.tensor([[[0.1, 0.6, 0.3, 0.9]]])
    emb = box_sine_embedding(boxes, num_feats=8)
    assert emb.shape == (1, 1, 32)
    for c, v in enumerate([0.1, 0.6, 0.3, 0.9]):
        for k in range(4):
            angle = v * 2 * math.pi / 10000**(2 * k / 8)
            assert math.isclose(emb[0, 0, 8 * c + 2 * k].item(), math.sin(angle), abs_tol=1e-6)
            assert math.isclose(emb[0, 0, 8 * c + 2 * k + 1].item(), math.cos(angle), abs_tol=1e-6)


def test_queries_positional_half_first():
    torch.manual_seed(0)
    module = EncoderProposals(embed_dims=8)
    unact = torch.randn(2, 3, 4)
    query_pos, query = module.queries(unact)
    full = module.query_norm(module.query_proj(box_sine_embedding(unact.sigmoid(), 4)))
    torch.testing.assert_close(query_pos, full[..., :8])
    torch.testing.assert_close(query, full[..., 8:])
