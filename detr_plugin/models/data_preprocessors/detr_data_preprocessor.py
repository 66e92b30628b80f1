"""mmdet's data preprocessor with the BGR <-> RGB conversion done by ``Tensor.flip`` on the GPU."""
from typing import Union

from mmdet.models.data_preprocessors import DetDataPreprocessor
from torch import Tensor

from detr_plugin.registry import MODELS

Inputs = Union[Tensor, list]  # (N, 3, H, W) stacked, or (3, H, W) images (pseudo_collate)


@MODELS.register_module()
class DETRDataPreprocessor(DetDataPreprocessor):
    """``DetDataPreprocessor`` with the same arguments and outputs whose ``bgr_to_rgb`` /
    ``rgb_to_bgr`` reverse the channels with ``Tensor.flip`` once the batch is on the device,
    before normalization. mmengine indexes each image with the Python list ``[2, 1, 0]``, which
    CUDA copies to the GPU with a blocking copy, a host wait per image.

    Args:
        bgr_to_rgb: reverse the channel order of the 3-channel images.
        rgb_to_bgr: the same flip (mmengine's other name for it); not both.
        **kwargs: the other arguments of ``DetDataPreprocessor``.
    """

    def __init__(self, bgr_to_rgb: bool = False, rgb_to_bgr: bool = False, **kwargs) -> None:
        if bgr_to_rgb and rgb_to_bgr:
            raise ValueError('DETRDataPreprocessor: bgr_to_rgb and rgb_to_bgr are both True')
        super().__init__(bgr_to_rgb=False, rgb_to_bgr=False, **kwargs)
        self.flip_channels = bgr_to_rgb or rgb_to_bgr

    def cast_data(self, data):
        """mmengine's copy to the device (it recurses through here), then the batch's channels
        flipped: ``data`` is the batch when it is a dict holding ``inputs``."""
        data = super().cast_data(data)
        if self.flip_channels and isinstance(data, dict) and 'inputs' in data:
            data['inputs'] = flip_channels(data['inputs'])
        return data


def flip_channels(inputs: Inputs) -> Inputs:
    """(N, 3, H, W) -> the same with channels 2, 1, 0; a list of (3, H, W) images alike."""
    if isinstance(inputs, Tensor):
        if inputs.dim() != 4 or inputs.shape[1] != 3:
            raise ValueError(f'DETRDataPreprocessor: bgr_to_rgb / rgb_to_bgr need (N, 3, H, W) '
                             f'inputs, got {tuple(inputs.shape)}')
        return inputs.flip(1)
    if any(image.dim() != 3 or image.shape[0] != 3 for image in inputs):
        raise ValueError('DETRDataPreprocessor: bgr_to_rgb / rgb_to_bgr need (3, H, W) images, '
                         f'got {[tuple(image.shape) for image in inputs]}')
    return [image.flip(0) for image in inputs]
