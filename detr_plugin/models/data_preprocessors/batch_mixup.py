"""DEIM's MixUp: each image of a batch blended with its neighbour, both images' objects kept."""
import random
from typing import List, Tuple

from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData
from torch import Tensor, nn

from detr_plugin.registry import MODELS


@MODELS.register_module()
class BatchMixUp(nn.Module):
    """A batch augment of ``DetDataPreprocessor`` doing what DEIM's collate function does.

    With probability ``prob`` per batch, a ratio ``beta`` is drawn uniformly from
    ``ratio_range`` (rounded to 6 decimals as DEIM does) and image i becomes
    ``beta * image_i + (1 - beta) * image_(i-1)`` (image -1 is the last), with the ground truth
    of image i followed by that of image i - 1. The blend is of the normalized, padded batch:
    normalization is affine, so this equals DEIM's blend of [0, 1] images. A batch of one image
    is left alone (DEIM would blend the image with itself and duplicate its objects).

    Put it before ``BatchSyncRandomResize`` in ``batch_augments``: DEIM mixes, then resizes.

    Args:
        prob: probability of mixing a batch.
        ratio_range: (min, max) of ``beta``, the weight of each image's own content.
    """

    def __init__(self, prob: float = 0.5, ratio_range: Tuple[float, float] = (0.45, 0.55)) -> None:
        super().__init__()
        if not 0 <= prob <= 1:
            raise ValueError(f'BatchMixUp: prob must be in [0, 1], got {prob}')
        self.prob = prob
        self.ratio_range = tuple(ratio_range)

    def forward(self, inputs: Tensor, data_samples: List[DetDataSample]
                ) -> Tuple[Tensor, List[DetDataSample]]:
        """inputs: (bs, C, H, W); the data samples' ``gt_instances`` (and ``ignored_instances``)
        gain those of the previous image."""
        if len(inputs) < 2 or random.random() >= self.prob:
            return inputs, data_samples
        beta = round(random.uniform(*self.ratio_range), 6)
        inputs = inputs * beta + inputs.roll(shifts=1, dims=0) * (1.0 - beta)
        previous = data_samples[-1:] + data_samples[:-1]
        for field in ('gt_instances', 'ignored_instances'):
            if all(field in sample for sample in data_samples):
                merged = [InstanceData.cat([getattr(own, field), getattr(other, field)])
                          for own, other in zip(data_samples, previous)]
                for sample, instances in zip(data_samples, merged):
                    setattr(sample, field, instances)
        return inputs, data_samples

    def extra_repr(self) -> str:
        return f'prob={self.prob}, ratio_range={self.ratio_range}'

