"""AugmentationWindowHook: DEIM's four stages (no augmentation, Dense O2O, without Mosaic and
MixUp, no augmentation) epoch by epoch, after a resume into any of them, with a Compose pipeline
and with MultiImageMixDataset's; a name not in the pipeline is an error."""
import logging
from types import SimpleNamespace

import pytest
import torch
from mmdet.datasets import MultiImageMixDataset
from mmdet.models.data_preprocessors import DetDataPreprocessor
from mmengine.dataset import BaseDataset

import detr_plugin  # noqa: F401  (registers the transforms and the batch augment)
from detr_plugin.engine.hooks import AugmentationWindowHook

PIPELINE = [
    dict(type='Mosaic', img_scale=32, prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='SkipAfterMosaic', transforms=[dict(type='RandomIoUCrop', prob=0.8)]),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=(64, 64), keep_ratio=False),
]
# DEIM's policy.epoch [4, 29, 50] and mixup_epochs [4, 29], scaled to [1, 3, 5]
WINDOWS = dict(Mosaic=(1, 3), BatchMixUp=(1, 3), PhotoMetricDistortion=(1, 5),
               SkipAfterMosaic=(1, 5), BatchSyncRandomResize=(0, 5))


def expected(epoch):
    """What DEIM's Compose.stop_epoch_forward and collate function run at ``epoch``."""
    transforms = ['RandomFlip', 'Resize']
    if 1 <= epoch < 3:
        transforms = ['Mosaic', 'PhotoMetricDistortion', 'SkipAfterMosaic'] + transforms
    elif 3 <= epoch < 5:
        transforms = ['PhotoMetricDistortion', 'SkipAfterMosaic'] + transforms
    augments = (['BatchMixUp'] if 1 <= epoch < 3 else []) + (
        ['BatchSyncRandomResize'] if epoch < 5 else [])
    return transforms, augments


class Empty(BaseDataset):
    def __init__(self, pipeline):
        super().__init__(serialize_data=False, pipeline=pipeline, lazy_init=False)

    def load_data_list(self):
        return [dict(img_path='unused')]


def runner_at(epoch, mix_dataset=False, persistent_workers=False):
    dataset = (MultiImageMixDataset(Empty([]), pipeline=PIPELINE) if mix_dataset
               else Empty(PIPELINE))
    model = torch.nn.Module()
    model.data_preprocessor = DetDataPreprocessor(batch_augments=[
        dict(type='detr_plugin.BatchMixUp'),
        dict(type='BatchSyncRandomResize', random_size_range=(32, 64), size_divisor=32)])
    loader = SimpleNamespace(dataset=dataset, persistent_workers=persistent_workers,
                             _iterator='workers')
    return SimpleNamespace(epoch=epoch, train_dataloader=loader, model=model,
                           logger=logging.getLogger('test'))


def running(runner):
    dataset = runner.train_dataloader.dataset
    transforms = dataset.pipeline if isinstance(dataset.pipeline, list) else (
        dataset.pipeline.transforms)
    augments = runner.model.data_preprocessor.batch_augments or []
    return [type(t).__name__ for t in transforms], [type(a).__name__ for a in augments]


@pytest.mark.parametrize('mix_dataset', [False, True])
def test_epoch_by_epoch(mix_dataset):
    hook, runner = AugmentationWindowHook(WINDOWS), runner_at(0, mix_dataset)
    hook.before_train(runner)
    for epoch in range(7):
        runner.epoch = epoch
        hook.before_train_epoch(runner)
        assert running(runner) == expected(epoch), epoch
        if mix_dataset:  # the type names stay aligned with the transforms
            dataset = runner.train_dataloader.dataset
            assert [n.split('.')[-1] for n in dataset.pipeline_types] == running(runner)[0]


@pytest.mark.parametrize('epoch', [0, 1, 2, 4, 6])
def test_resumed_into_any_stage(epoch):
    hook, runner = AugmentationWindowHook(WINDOWS), runner_at(epoch)
    hook.before_train(runner)
    hook.before_train_epoch(runner)
    assert running(runner) == expected(epoch)


def test_persistent_workers_restart_only_when_the_set_changes():
    hook, runner = AugmentationWindowHook(WINDOWS), runner_at(1, persistent_workers=True)
    hook.before_train(runner)
    hook.before_train_epoch(runner)
    loader = runner.train_dataloader
    assert loader._iterator is None
    loader._iterator = 'workers'
    runner.epoch = 2
    hook.before_train_epoch(runner)
    assert loader._iterator == 'workers'
    runner.epoch = 3
    hook.before_train_epoch(runner)
    assert loader._iterator is None


def test_unknown_names_and_bad_windows_are_errors():
    with pytest.raises(ValueError, match=r"\['RandomZoomOut'\] are neither transforms"):
        AugmentationWindowHook(dict(Mosaic=(1, 3), RandomZoomOut=(1, 5))).before_train(
            runner_at(0))
    with pytest.raises(ValueError, match='0 <= start <= stop'):
        AugmentationWindowHook(dict(Mosaic=(3, 1)))
