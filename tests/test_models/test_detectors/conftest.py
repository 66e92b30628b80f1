"""Padded input batches for the detector tests."""
import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData


def padded_batch(shapes, boxes_per_image, batch_shape=(64, 64)):
    """Images of the given (h, w) sizes padded into one (bs, 3, H, W) batch, with gt boxes
    (xyxy pixels) labelled 0, 1, 2, 0, ... and the metainfo the data preprocessor would set."""
    inputs = torch.zeros(len(shapes), 3, *batch_shape)
    samples = []
    for i, ((h, w), boxes) in enumerate(zip(shapes, boxes_per_image)):
        inputs[i, :, :h, :w] = torch.rand(3, h, w) * 255
        s = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1., 1.),
                                        batch_input_shape=batch_shape, pad_shape=batch_shape))
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        s.gt_instances = InstanceData(bboxes=boxes, labels=torch.arange(len(boxes)) % 3)
        samples.append(s)
    return inputs, samples


@pytest.fixture(scope='session')
def make_batch():
    return padded_batch
