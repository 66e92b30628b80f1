"""StopAugmentationHook and AugmentationWindowHook: a name stands for the transform's subclasses
(ZeroFillExpand for Expand), and only for them (ContiguousRandomFlip is not an Expand)."""
import logging
from types import SimpleNamespace

import pytest
import torch
from mmdet.models.data_preprocessors import DetDataPreprocessor
from mmengine.dataset import BaseDataset

import detr_plugin  # noqa: F401  (registers the transforms)
from detr_plugin.engine.hooks import AugmentationWindowHook
from detr_plugin.engine.hooks.stop_augmentation_hook import StopAugmentationHook

PIPELINE = [
    dict(type='PhotoMetricDistortion'),
    dict(type='ZeroFillExpand', mean=[0, 0, 0], to_rgb=True, ratio_range=(1, 4), prob=0.5),
    dict(type='RandomIoUCrop', prob=0.8),
    dict(type='ContiguousRandomFlip', prob=0.5),
    dict(type='Resize', scale=(64, 64), keep_ratio=False),
]


class Empty(BaseDataset):
    def __init__(self):
        super().__init__(serialize_data=False, pipeline=PIPELINE, lazy_init=False)

    def load_data_list(self):
        return [dict(img_path='unused')]


def runner_at(epoch):
    model = torch.nn.Module()
    model.data_preprocessor = DetDataPreprocessor()
    loader = SimpleNamespace(dataset=Empty(), persistent_workers=False)
    return SimpleNamespace(epoch=epoch, train_dataloader=loader, model=model,
                           logger=logging.getLogger('test'))


def names(runner):
    return [type(t).__name__ for t in runner.train_dataloader.dataset.pipeline.transforms]


@pytest.mark.parametrize('epoch,kept', [
    (2, ['PhotoMetricDistortion', 'ZeroFillExpand', 'RandomIoUCrop', 'ContiguousRandomFlip',
         'Resize']),
    (3, ['ContiguousRandomFlip', 'Resize'])])
def test_stop_hook_drops_the_subclass_by_its_base_name(epoch, kept):
    hook, runner = StopAugmentationHook(stop_epoch=3), runner_at(epoch)
    hook.before_train(runner)  # 'Expand' is found
    hook.before_train_epoch(runner)
    assert names(runner) == kept


@pytest.mark.parametrize('epoch,kept', [
    (0, ['PhotoMetricDistortion', 'ZeroFillExpand', 'RandomIoUCrop', 'ContiguousRandomFlip',
         'Resize']),
    (2, ['PhotoMetricDistortion', 'RandomIoUCrop', 'ContiguousRandomFlip', 'Resize'])])
def test_window_hook_windows_the_subclass_by_its_base_name(epoch, kept):
    hook, runner = AugmentationWindowHook(dict(Expand=(0, 2))), runner_at(epoch)
    hook.before_train(runner)
    hook.before_train_epoch(runner)
    assert names(runner) == kept


def test_an_unrelated_name_is_still_an_error():
    with pytest.raises(ValueError, match='MinIoURandomCrop'):
        StopAugmentationHook(3, ['MinIoURandomCrop']).before_train(runner_at(0))
