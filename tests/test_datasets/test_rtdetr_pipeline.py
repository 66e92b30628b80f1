"""The RT-DETR COCO training pipeline (photometric distortion, zoom-out, IoU crop, box filter,
flip, 640 x 640 resize) on generated images, including an image without boxes."""
import pathlib

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope

from detr_plugin.registry import DATASETS
from detr_plugin.utils import register_all_modules

register_all_modules(init_default_scope=False)
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def dataset(tmp_path_factory, demo_runs):
    root = tmp_path_factory.mktemp('demo')
    demo_runs.load_make_demo_dataset().make_demo_dataset(str(root), seed=3, num_train=6, num_val=1)
    cfg = Config.fromfile(str(REPO_ROOT / 'configs/rtdetr/rtdetr_r50vd_8xb2-72e_coco.py'))
    ds_cfg = cfg.train_dataloader.dataset
    ds_cfg.update(data_root=f'{root}/', ann_file='annotations/instances_train.json',
                  data_prefix=dict(img='train/'),
                  metainfo=dict(classes=('square', 'circle', 'triangle')))
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        return DATASETS.build(ds_cfg)


def test_outputs_are_640_with_valid_boxes(dataset):
    np.random.seed(0)
    assert len(dataset) == 6  # images without boxes are kept
    for _ in range(4):
        for i in range(len(dataset)):
            item = dataset[i]
            assert tuple(item['inputs'].shape) == (3, 640, 640)
            boxes = item['data_samples'].gt_instances.bboxes.tensor
            assert item['data_samples'].metainfo['img_shape'] == (640, 640)
            if len(boxes):
                assert (boxes >= 0).all() and (boxes <= 640).all()
                assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all()  # boxes under 1 px dropped


def test_image_without_boxes_passes(dataset):
    pipeline = dataset.pipeline
    info = dict(dataset.get_data_info(0))
    info['instances'] = []
    np.random.seed(1)
    for _ in range(5):
        item = pipeline(dict(info))
        assert item is not None and len(item['data_samples'].gt_instances) == 0
