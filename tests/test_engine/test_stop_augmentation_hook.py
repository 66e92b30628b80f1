"""StopAugmentationHook: the named transforms and the batch augments stop at stop_epoch (also
after a resume past it); a name not in the pipeline is an error."""
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmcv.transforms import Compose
from mmdet.models.data_preprocessors import DetDataPreprocessor

from detr_plugin.engine.hooks.stop_augmentation_hook import StopAugmentationHook

PIPELINE = [
    dict(type='PhotoMetricDistortion', brightness_delta=16, hue_delta=9),
    dict(type='Expand', mean=[0, 0, 0], to_rgb=True, ratio_range=(1, 4), prob=1.0),
    dict(type='RandomIoUCrop', prob=0.8),
    dict(type='RandomFlip', prob=0.0),
    dict(type='Resize', scale=(32, 32), keep_ratio=False),
]


class Dataset(torch.utils.data.Dataset):
    def __init__(self):
        self.pipeline = Compose(PIPELINE)

    def __len__(self):
        return 1

    def __getitem__(self, i):
        img = np.full((16, 24, 3), 100, dtype=np.uint8)
        return self.pipeline(dict(img=img, img_shape=(16, 24), gt_bboxes=np.zeros((0, 4),
                                  np.float32), gt_bboxes_labels=np.zeros(0, np.int64)))


def runner_at(epoch):
    preprocessor = DetDataPreprocessor(batch_augments=[dict(
        type='BatchSyncRandomResize', random_size_range=(32, 64), size_divisor=32, interval=1)])
    model = torch.nn.Module()
    model.data_preprocessor = preprocessor
    loader = torch.utils.data.DataLoader(Dataset(), collate_fn=lambda x: x)
    return SimpleNamespace(epoch=epoch, train_dataloader=loader, model=model,
                           logger=logging.getLogger('test'))


def names(runner):
    return [type(t).__name__ for t in runner.train_dataloader.dataset.pipeline.transforms]


def test_nothing_changes_before_the_stop_epoch():
    hook, runner = StopAugmentationHook(stop_epoch=3), runner_at(2)
    hook.before_train(runner)
    hook.before_train_epoch(runner)
    assert len(names(runner)) == 5 and runner.model.data_preprocessor.batch_augments is not None


@pytest.mark.parametrize('epoch', [3, 7])  # at the stop epoch, and resumed past it
def test_strong_augmentations_stop(epoch):
    hook, runner = StopAugmentationHook(stop_epoch=3), runner_at(epoch)
    hook.before_train(runner)
    hook.before_train_epoch(runner)
    assert names(runner) == ['RandomFlip', 'Resize']
    assert runner.model.data_preprocessor.batch_augments is None
    # the pipeline the loader runs now: a flat grey image stays flat grey, only resized
    sample = next(iter(runner.train_dataloader))[0]
    assert sample['img'].shape == (32, 32, 3) and (sample['img'] == 100).all()


def test_batch_augments_can_stay():
    hook, runner = StopAugmentationHook(3, ['Expand'], stop_batch_augments=False), runner_at(3)
    hook.before_train_epoch(runner)
    assert 'Expand' not in names(runner) and len(names(runner)) == 4
    assert runner.model.data_preprocessor.batch_augments is not None


def test_a_name_not_in_the_pipeline_is_an_error():
    hook = StopAugmentationHook(3, ['PhotoMetricDistortion', 'RandomZoomOut'])
    with pytest.raises(ValueError, match=r"\['RandomZoomOut'\] are not in the training pipeline"):
        hook.before_train(runner_at(0))
