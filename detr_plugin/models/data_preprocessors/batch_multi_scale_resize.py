"""The multi-scale training of D-FINE and DEIM: each batch at a square size drawn from a list."""
import random
from typing import List, Sequence, Tuple

import torch.nn.functional as F
from mmdet.structures import DetDataSample
from torch import Tensor, nn

from detr_plugin.registry import MODELS


@MODELS.register_module()
class BatchMultiScaleResize(nn.Module):
    """A batch augment of ``DetDataPreprocessor`` doing what the collate function of D-FINE and
    DEIM does: each batch resized to ``side x side``, ``side`` drawn uniformly from ``sizes``
    (a size listed k times is drawn k times as often), by ``F.interpolate`` in ``mode``
    ('nearest', the original's, is torch's default). Boxes and image shapes are scaled with it.

    The originals list 480 to 608 and 800 down to 672 in steps of 32 and their base size 640
    ``base_size_repeat`` times (3, or per model 20 for D-FINE-S, 6 for M, 4 for L, 3 for X). Each
    process draws its own size, as the originals' loader workers do.

    Args:
        sizes: the square sides to draw from.
        mode: interpolation mode of ``F.interpolate``.
    """

    def __init__(self, sizes: Sequence[int], mode: str = 'nearest') -> None:
        super().__init__()
        if not sizes:
            raise ValueError('BatchMultiScaleResize: sizes is empty')
        self.sizes = [int(s) for s in sizes]
        self.mode = mode

    def forward(self, inputs: Tensor, data_samples: List[DetDataSample]
                ) -> Tuple[Tensor, List[DetDataSample]]:
        """inputs: (bs, C, H, W) -> (bs, C, side, side); xyxy pixel boxes scaled alike."""
        side = random.choice(self.sizes)
        height, width = inputs.shape[-2:]
        if (height, width) == (side, side):
            return inputs, data_samples
        inputs = F.interpolate(inputs, size=(side, side), mode=self.mode)
        sy, sx = side / height, side / width
        for sample in data_samples:
            sample.set_metainfo(dict(
                img_shape=(int(sample.img_shape[0] * sy), int(sample.img_shape[1] * sx)),
                pad_shape=(int(sample.pad_shape[0] * sy), int(sample.pad_shape[1] * sx)),
                batch_input_shape=(side, side)))
            for field in ('gt_instances', 'ignored_instances'):
                if field in sample:
                    boxes = getattr(sample, field).bboxes
                    boxes[..., 0::2] = boxes[..., 0::2] * sx
                    boxes[..., 1::2] = boxes[..., 1::2] * sy
        return inputs, data_samples

    def extra_repr(self) -> str:
        return f'sizes={self.sizes}, mode={self.mode}'
