"""GO-LSD matching union against hand-derived answers and one literal result of the original."""
import pytest
import torch

from detr_plugin.models.task_modules import matching_union


def _m(*images):
    return [(torch.tensor(q, dtype=torch.long), torch.tensor(g, dtype=torch.long))
            for q, g in images]


def _lists(union):
    return [(q.tolist(), g.tolist()) for q, g in union]


def test_union_ranks_by_count_and_keeps_each_querys_best_pair():
    # counts: (0,0) x4, (1,1) x3, (2,2) x2, and (1,2), (2,1), (3,2) x1.
    # each query's most frequent pair wins; query 3's only pair shares gt 2 with query 2
    union = matching_union([_m(([0, 1, 2], [0, 1, 2])), _m(([0, 1, 2], [0, 1, 2])),
                            _m(([0, 1, 3], [0, 1, 2])), _m(([0, 1, 2], [0, 2, 1]))])
    assert _lists(union) == [([0, 1, 2, 3], [0, 1, 2, 2])]


def test_union_order_of_matchings_is_irrelevant_and_empty_images():
    a = _m(([0, 1], [0, 1]), ([], []), ([4], [0]))
    b = _m(([0, 1], [0, 1]), ([], []), ([4], [0]))
    c = _m(([0, 2], [0, 1]), ([], []), ([2], [0]))
    # image 0: (0,0) x3, (1,1) x2, (2,1) x1; image 1: nothing; image 2: (4,0) x2, (2,0) x1
    expected = [([0, 1, 2], [0, 1, 1]), ([], []), ([4, 2], [0, 0])]
    assert _lists(matching_union([a, b, c])) == expected
    assert _lists(matching_union([c, a, b])) == expected
    assert _lists(matching_union([a])) == [([0, 1], [0, 1]), ([], []), ([4], [0])]


def test_union_matches_the_original_function():
    # 7 matchings of 2 images (5 and 3 gts over 6 queries, many pairs of equal count, so the
    # ranking of ties decides several gts); the expected union is the output of D-FINE's
    # DFINECriterion._get_go_indices on this input (torch 2.14, CPU), written out.
    layers = [
        [([0, 1, 2, 3, 4], [1, 4, 3, 2, 0]), ([0, 1, 3], [0, 1, 2])],
        [([0, 2, 3, 4, 5], [4, 1, 2, 0, 3]), ([0, 1, 4], [1, 0, 2])],
        [([0, 1, 3, 4, 5], [0, 2, 4, 3, 1]), ([2, 3, 4], [0, 1, 2])],
        [([0, 1, 2, 4, 5], [0, 2, 1, 3, 4]), ([0, 2, 4], [2, 0, 1])],
        [([1, 2, 3, 4, 5], [0, 2, 3, 4, 1]), ([2, 3, 5], [1, 0, 2])],
        [([1, 2, 3, 4, 5], [3, 1, 2, 4, 0]), ([1, 2, 5], [0, 1, 2])],
        [([0, 1, 2, 3, 4], [1, 2, 4, 3, 0]), ([1, 2, 4], [0, 2, 1])],
    ]
    union = matching_union([_m(*images) for images in layers])
    assert _lists(union) == [([1, 2, 4, 3, 0, 5], [2, 1, 0, 2, 1, 1]),
                             ([1, 2, 4, 5, 0, 3], [0, 0, 1, 2, 0, 0])]
    assert all(q.dtype == torch.long and g.dtype == torch.long for q, g in union)


def test_union_rejects_malformed_input():
    with pytest.raises(ValueError, match='matching_union'):
        matching_union([])
    with pytest.raises(ValueError, match='matching_union'):
        matching_union([_m(([0], [0])), _m(([0], [0]), ([1], [0]))])
