"""DETRDataPreprocessor against mmdet's DetDataPreprocessor (mmengine's list-index channel swap):
bitwise equal outputs for list and stacked inputs, in training and not; and no host wait."""
import pytest
import torch
from mmdet.models.data_preprocessors import DetDataPreprocessor
from mmdet.structures import DetDataSample
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

from detr_plugin.registry import MODELS
from detr_plugin.testing import HostSyncRecorder, loader_batch

ARGS = dict(mean=[1., 2., 3.], std=[4., 5., 6.], pad_size_divisor=32, pad_value=7,
            non_blocking=True)


def build(type_: str, **kwargs):
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        return MODELS.build(dict(type=type_, **ARGS, **kwargs))


def batch(stacked: bool, seed: int = 0) -> dict:
    """uint8 images (distinct values per channel) and one box each, as the data loader gives."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [(40, 33), (40, 33)] if stacked else [(40, 33), (29, 50)]
    inputs, samples = [], []
    for h, w in sizes:
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator))
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
        sample.gt_instances = InstanceData(bboxes=torch.tensor([[1., 2., w - 3., h - 4.]]),
                                           labels=torch.tensor([1]))
        samples.append(sample)
    return dict(inputs=torch.stack(inputs) if stacked else inputs, data_samples=samples)


@pytest.mark.parametrize('stacked', [False, True])
@pytest.mark.parametrize('training', [False, True])
@pytest.mark.parametrize('swap', [dict(bgr_to_rgb=True), dict(rgb_to_bgr=True),
                                  dict(bgr_to_rgb=False)])
def test_outputs_equal_mmdets(stacked, training, swap):
    augments = [dict(type='BatchFixedSizePad', size=(96, 80), img_pad_value=9)]
    ours = build('DETRDataPreprocessor', batch_augments=augments, **swap)
    reference = DetDataPreprocessor(**ARGS, batch_augments=augments, **swap)
    assert type(ours) is not DetDataPreprocessor
    out, expected = ours(batch(stacked), training), reference(batch(stacked), training)
    assert out['inputs'].dtype == torch.float32
    assert torch.equal(out['inputs'], expected['inputs'])
    if swap.get('bgr_to_rgb', True):  # a flip happened: the first channel is the last one's
        unflipped = DetDataPreprocessor(**ARGS)(batch(stacked), training)['inputs']
        assert not torch.equal(out['inputs'], unflipped)
    for sample, reference_sample in zip(out['data_samples'], expected['data_samples']):
        assert sample.metainfo == reference_sample.metainfo
        assert torch.equal(sample.gt_instances.bboxes, reference_sample.gt_instances.bboxes)


def test_channel_flip_is_not_a_host_wait():
    """mmengine's list index is copied to the device once per image; the flip copies nothing."""
    data = loader_batch(0)
    waits = {}
    for name, preprocessor in [('ours', build('DETRDataPreprocessor', bgr_to_rgb=True)),
                               ('mmdet', DetDataPreprocessor(**ARGS, bgr_to_rgb=True))]:
        with HostSyncRecorder(preprocessor) as rec:
            preprocessor(data, True)
        waits[name] = rec.total
    assert waits == dict(ours=0, mmdet=len(data['inputs']))


def test_both_conversions_and_other_channel_counts_are_refused():
    with pytest.raises(ValueError, match='both True'):
        build('DETRDataPreprocessor', bgr_to_rgb=True, rgb_to_bgr=True)
    grey = dict(inputs=[torch.zeros(1, 4, 4, dtype=torch.uint8)], data_samples=None)
    with pytest.raises(ValueError, match=r'need \(3, H, W\) images'):
        build('DETRDataPreprocessor', bgr_to_rgb=True)(grey)
