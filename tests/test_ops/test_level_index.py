"""level_index_tensors: values against a hand computation, one object per layout, usable in
training after being made under inference_mode."""
import torch

from detr_plugin.ops import level_index_tensors


def test_values_and_identity():
    shapes, starts = level_index_tensors(((4, 6), (2, 3), (1, 2)), torch.device('cpu'))
    assert shapes.tolist() == [[4, 6], [2, 3], [1, 2]]
    assert starts.tolist() == [0, 24, 30]  # 0, 4*6, 4*6 + 2*3
    again = level_index_tensors(((4, 6), (2, 3), (1, 2)), torch.device('cpu'))
    assert again[0] is shapes and again[1] is starts
    other = level_index_tensors(((4, 6),), torch.device('cpu'))
    assert other[0].tolist() == [[4, 6]] and other[1].tolist() == [0]


def test_made_under_inference_mode_is_a_normal_tensor():
    with torch.inference_mode():
        shapes, _ = level_index_tensors(((5, 7), (3, 4)), torch.device('cpu'))
    assert not shapes.is_inference()
