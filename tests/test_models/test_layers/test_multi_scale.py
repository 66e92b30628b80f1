"""The multi-scale plumbing against values written out by hand: valid ratios, flattening, pixel
centres, encoder reference points, two-stage proposal boxes and RT-DETR anchors."""
import math

import torch

from detr_plugin.models.layers.multi_scale import (LevelAnchors, LevelIndex, MultiScaleLevels,
                                                   encoder_reference_points, flatten_levels,
                                                   level_boxes, valid_ratios)


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


def test_flatten_levels_layout_and_token_order():
    feats = [torch.randn(2, 3, 2, 3), torch.randn(2, 3, 1, 2)]
    masks = [padded_mask((2, 3), [(2, 3), (1, 2)]), padded_mask((1, 2), [(1, 2), (1, 1)])]
    tokens, levels = flatten_levels(feats, LevelIndex(), torch.ones(2, 2, 2), masks)
    assert tokens.shape == (2, 8, 3) and levels.shapes == ((2, 3), (1, 2))
    assert levels.spatial_shapes.tolist() == [[2, 3], [1, 2]]
    assert levels.level_start_index.tolist() == [0, 6]
    # token 4 is level 0's pixel (1, 1); token 7 is level 1's pixel (0, 1)
    torch.testing.assert_close(tokens[:, 4], feats[0][:, :, 1, 1])
    torch.testing.assert_close(tokens[:, 7], feats[1][:, :, 0, 1])
    assert levels.padding_mask[1].tolist() == [False, False, True, True, True, True, False, True]
    _, unpadded = flatten_levels(feats, LevelIndex())
    assert unpadded.padding_mask is None and torch.equal(unpadded.valid_ratios, torch.ones(2, 2, 2))


def test_encoder_reference_points_by_hand():
    """Level 0 is 2 x 3 with 1 x 2 valid (ratios w 2/3, h 1/2); level 1 is 1 x 2 with 1 x 1 valid
    (w 1/2, h 1). A pixel's centre is normalized by its own level's valid size, then scaled to
    each level by that level's ratio."""
    ratios = torch.tensor([[[2 / 3, 1 / 2], [1 / 2, 1.0]]])  # (1, L, 2) as (w, h)
    expected = []
    for h, w, valid_w, valid_h in [(2, 3, 2, 1), (1, 2, 1, 1)]:
        for i in range(h):
            for j in range(w):
                x, y = (j + 0.5) / valid_w, (i + 0.5) / valid_h
                expected.append([[x * 2 / 3, y * 1 / 2], [x * 1 / 2, y * 1.0]])
    points = encoder_reference_points(MultiScaleLevels.from_shapes([(2, 3), (1, 2)], ratios,
                                                                   LevelIndex()))
    assert points.shape == (1, 8, 2, 2)
    torch.testing.assert_close(points[0], torch.tensor(expected))
    # the valid region's first pixel of level 0 sits at its centre on every level
    torch.testing.assert_close(points[0, 0, 0], torch.tensor([0.5 / 3, 0.5 / 2]))


def test_level_boxes_by_hand():
    shapes = [(2, 3), (1, 2)]
    sizes = torch.tensor([[[2.0, 1.0], [1.0, 1.0]]])  # (1, L, 2) (w, h) dividing the centres
    expected = []
    for lvl, (h, w, vw, vh) in enumerate([(2, 3, 2, 1), (1, 2, 1, 1)]):
        for i in range(h):
            for j in range(w):
                expected.append([(j + 0.5) / vw, (i + 0.5) / vh, 0.05 * 2**lvl, 0.05 * 2**lvl])
    torch.testing.assert_close(level_boxes(shapes, sizes, 0.05), torch.tensor([expected]))


def levels_of(shapes):
    return MultiScaleLevels.from_shapes(shapes, torch.ones(1, len(shapes), 2), LevelIndex())


def test_anchors_and_valid_mask_by_hand():
    anchors, valid = LevelAnchors(0.05, 0.01)(levels_of([(2, 3), (1, 1)]))
    assert anchors.shape == (1, 7, 4) and valid.shape == (1, 7, 1)
    # level 0, row 1, column 2: centre ((2 + .5) / 3, (1 + .5) / 2), side 0.05
    expected = [math.log(v / (1 - v)) for v in (2.5 / 3, 1.5 / 2, 0.05, 0.05)]
    torch.testing.assert_close(anchors[0, 5], torch.tensor(expected))
    # level 1: one pixel, centre (0.5, 0.5), side 0.1
    torch.testing.assert_close(anchors[0, 6], torch.tensor([0., 0.] + [math.log(.1 / .9)] * 2))
    assert valid.all()


def test_anchors_outside_margin_are_invalid_and_infinite():
    # an 80-wide level: centres 0.5 / 80 = 0.00625 < 0.01 on the first and last column
    anchors, valid = LevelAnchors(0.05, 0.01)(levels_of([(1, 80)]))
    expected_valid = torch.ones(80, dtype=torch.bool)
    expected_valid[[0, 79]] = False
    assert torch.equal(valid[0, :, 0], expected_valid)
    assert torch.isinf(anchors[0, ~expected_valid]).all()
    assert torch.isfinite(anchors[0, expected_valid]).all()
    # the anchors of level 5 are too large (0.05 * 2^5 = 1.6 > 0.99); level 4's are 0.8
    _, valid = LevelAnchors(0.05, 0.01)(levels_of([(1, 1)] * 6))
    assert valid[0, :, 0].tolist() == [True] * 5 + [False]


def test_anchors_kept_per_layout_and_usable_after_inference_mode():
    module = LevelAnchors()
    with torch.inference_mode():
        first, _ = module(levels_of([(2, 2)]))
    assert not first.is_inference()  # training may reuse what inference made
    again, _ = module(levels_of([(2, 2)]))
    assert again is first
    other, _ = module(levels_of([(3, 2)]))
    assert other.shape == (1, 6, 4)
    assert not any(name == 'anchors' for name, _ in module.named_buffers())


def test_level_index_values_by_hand_and_one_object_per_layout():
    index = LevelIndex()
    shapes, starts = index(((4, 6), (2, 3), (1, 2)), torch.device('cpu'))
    assert shapes.tolist() == [[4, 6], [2, 3], [1, 2]] and shapes.dtype == torch.long
    assert starts.tolist() == [0, 24, 30]  # 0, 4*6, 4*6 + 2*3
    again = index(((4, 6), (2, 3), (1, 2)), torch.device('cpu'))
    assert again[0] is shapes and again[1] is starts
    other = index(((4, 6),), torch.device('cpu'))
    assert other[0].tolist() == [[4, 6]] and other[1].tolist() == [0]
    assert not list(index.buffers()) and not index.state_dict()


def test_level_index_keeps_the_last_size_layouts():
    index, cpu = LevelIndex(size=2), torch.device('cpu')
    a, b, c = ((1, 1),), ((2, 2),), ((3, 3),)
    first_a, first_b = index(a, cpu), index(b, cpu)
    assert index(a, cpu) is first_a  # a is now the most recently used: c drops b
    index(c, cpu)
    assert index(a, cpu) is first_a
    assert index(b, cpu)[0] is not first_b[0] and index(b, cpu)[0].tolist() == [[2, 2]]
    assert len(index.tensors) == 2


def test_level_index_made_under_inference_mode_is_a_normal_tensor():
    with torch.inference_mode():
        shapes, _ = LevelIndex()(((5, 7), (3, 4)), torch.device('cpu'))
    assert not shapes.is_inference()
