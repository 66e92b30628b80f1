"""The Dense O2O bases fit together: the dataset base's pipeline, on tiny demo data, gives 640 x 640
samples with boxes inside; the schedule's AugmentationWindowHook finds every name it windows in that
pipeline and the batch augments; its FlatCosineLR starts at 1/500 of the base rate; the restart
from the best checkpoint is at the end of the augmentation."""
import logging
from types import SimpleNamespace

import numpy as np
import torch
from mmdet.models.data_preprocessors import DetDataPreprocessor
from mmengine.config import Config

from detr_plugin.registry import DATASETS, HOOKS, PARAM_SCHEDULERS

DATASET_BASE = 'configs/_base_/datasets/coco_detection_dense_o2o.py'
SCHEDULE_BASE = 'configs/_base_/schedules/deim_dense_o2o_58e.py'


def tiny_dataset_cfg(demo_runs, tmp_path):
    demo_runs.make_tiny_dataset(tmp_path, num_train=4)
    cfg = Config.fromfile(str(demo_runs.REPO_ROOT / DATASET_BASE))
    dataset = cfg.train_dataloader.dataset
    dataset.dataset.update(data_root=f'{tmp_path}/', ann_file='annotations/instances_train.json',
                           data_prefix=dict(img='train/'),
                           metainfo=dict(classes=('square', 'circle', 'triangle')))
    return cfg, dataset


def test_dataset_base_gives_mosaics_of_640(demo_runs, tmp_path):
    cfg, dataset_cfg = tiny_dataset_cfg(demo_runs, tmp_path)
    dataset_cfg.pipeline[0].prob = 1.0  # every sample a mosaic
    dataset = DATASETS.build(dataset_cfg)
    np.random.seed(0)
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample['inputs'].shape == (3, 640, 640)
        boxes = sample['data_samples'].gt_instances.bboxes.numpy()
        assert ((boxes >= 0) & (boxes <= 640)).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) > 1).all()  # FilterAnnotations after the resize


def test_schedule_base_windows_the_dataset_base(demo_runs, tmp_path):
    cfg, dataset_cfg = tiny_dataset_cfg(demo_runs, tmp_path)
    schedule = Config.fromfile(str(demo_runs.REPO_ROOT / SCHEDULE_BASE))
    hook = HOOKS.build(schedule.default_hooks.augmentation_window)
    model = torch.nn.Module()
    model.data_preprocessor = DetDataPreprocessor(batch_augments=cfg.dense_o2o_batch_augments)
    runner = SimpleNamespace(
        epoch=10, model=model, logger=logging.getLogger('test'),
        train_dataloader=SimpleNamespace(dataset=DATASETS.build(dataset_cfg)))
    hook.before_train(runner)  # every windowed name is in the pipeline or the batch augments
    hook.before_train_epoch(runner)
    assert [type(t).__name__ for t in runner.train_dataloader.dataset.pipeline][:3] == [
        'Mosaic', 'PhotoMetricDistortion', 'SkipAfterMosaic']
    assert [type(a).__name__ for a in model.data_preprocessor.batch_augments] == [
        'BatchMixUp', 'BatchMultiScaleResize']
    # DEIM's generate_scales(640, 3)
    assert model.data_preprocessor.batch_augments[1].sizes == [
        480, 512, 544, 576, 608, 640, 640, 640, 800, 768, 736, 704, 672]

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
    scheduler = PARAM_SCHEDULERS.build(schedule.param_scheduler[0], default_args=dict(
        optimizer=optimizer, epoch_length=100))
    assert optimizer.param_groups[0]['lr'] == 5e-4 / 500
    assert (scheduler.end, scheduler.flat_end, scheduler.final_steps) == (5800, 2900, 800)
    assert HOOKS.build(schedule.default_hooks.restart_from_best).epoch == 50
    assert schedule.default_hooks.checkpoint.save_best == 'coco/bbox_mAP'
