"""The "my data" configs: what a user edits at the top reaches the datasets, the evaluator and the
head; 300 detections per image; a checkpoint per epoch and the best kept; drawings for any number
of classes."""
import pathlib

import numpy as np
import pytest
import torch
from mmdet.structures import DetDataSample
from mmdet.visualization import DetLocalVisualizer
from mmengine.config import Config
from mmengine.structures import InstanceData

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
MYDATA_CONFIGS = ['configs/rtdetr/rtdetr_r18vd_1xb8-mydata.py',
                  'configs/rtdetr/rtdetr_r50vd_1xb8-mydata.py',
                  'configs/deformable_detr/deformable-detr-refine-twostage_r50_1xb2-mydata.py',
                  'configs/dfine/dfine_hgnetv2-s_1xb8-mydata.py']
FIVE = ('apple', 'pear', 'plum', 'fig', 'kiwi')


def edited(path: str, tmp_path) -> Config:
    """The config with its top block edited as a user would: five classes, other files."""
    text = (REPO_ROOT / path).read_text()
    block = text[text.index('# ---- your data'):text.index('# ----', text.index('# ---- your') + 8)]
    lines = {line.split(' = ')[0]: line for line in block.splitlines() if ' = ' in line}
    text = (text.replace(lines['data_root'], "data_root = 'data/fruit/'")
                .replace(lines['classes'], f'classes = {FIVE!r}')
                .replace(lines['val_ann_file, val_images'],
                         "val_ann_file, val_images = 'ann/v.json', 'img/v/'")
                .replace("_base_ = './", f"_base_ = '{(REPO_ROOT / path).parent}/"))
    copy = tmp_path / pathlib.Path(path).name
    copy.write_text(text)
    return Config.fromfile(str(copy))


@pytest.mark.parametrize('path', MYDATA_CONFIGS)
def test_top_block_reaches_every_place(path, tmp_path):
    cfg = edited(path, tmp_path)
    assert cfg.model.bbox_head.num_classes == 5
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        assert loader.dataset.data_root == 'data/fruit/'
        assert tuple(loader.dataset.metainfo['classes']) == FIVE
    assert cfg.val_dataloader.dataset.ann_file == 'ann/v.json'
    assert cfg.val_dataloader.dataset.data_prefix == dict(img='img/v/')
    assert cfg.val_evaluator.ann_file == cfg.test_evaluator.ann_file == 'data/fruit/ann/v.json'
    palette = cfg.train_dataloader.dataset.metainfo['palette']
    assert len(set(map(tuple, palette))) == 5


@pytest.mark.parametrize('path', MYDATA_CONFIGS)
def test_detections_queries_and_checkpoints(path):
    cfg = Config.fromfile(str(REPO_ROOT / path))
    queries = cfg.model.get('num_queries') or cfg.model.decoder.num_queries
    assert queries >= 100 and cfg.model.test_cfg.max_per_img == 300
    checkpoint = cfg.default_hooks.checkpoint
    assert checkpoint.interval == 1 and checkpoint.save_best == 'coco/bbox_mAP'
    assert cfg.train_cfg.val_interval == 1
    assert not cfg.train_dataloader.persistent_workers   # exact --resume (RNGStateHook)


def test_dfine_stages_follow_max_epochs(tmp_path):
    """D-FINE's augmentation stop and restart come 10 % before the end, as 120 of 132 on COCO."""
    path = 'configs/dfine/dfine_hgnetv2-s_1xb8-mydata.py'
    text = (REPO_ROOT / path).read_text().replace('max_epochs = 72', 'max_epochs = 30')
    copy = tmp_path / 'dfine.py'
    copy.write_text(text.replace("_base_ = './", f"_base_ = '{(REPO_ROOT / path).parent}/"))
    cfg = Config.fromfile(str(copy))
    assert cfg.train_cfg.max_epochs == 30
    assert cfg.default_hooks.restart_from_best.epoch == 27
    assert set(cfg.default_hooks.augmentation_window.windows.values()) == {(0, 27)}
    assert cfg.default_hooks.checkpoint.save_best == 'coco/bbox_mAP'


def draw(metainfo, num_labels):
    visualizer = DetLocalVisualizer()
    visualizer.dataset_meta = metainfo
    sample = DetDataSample()
    sample.pred_instances = InstanceData(
        bboxes=torch.tensor([[4., 4., 20., 20.]] * num_labels), labels=torch.arange(num_labels),
        scores=torch.ones(num_labels))
    visualizer.add_datasample('x', np.zeros((32, 32, 3), np.uint8), sample, draw_gt=False)
    return visualizer.get_image()


def test_five_classes_draw(tmp_path):
    metainfo = edited(MYDATA_CONFIGS[0], tmp_path).train_dataloader.dataset.metainfo
    assert draw(metainfo, 5).shape == (32, 32, 3)
    demo = Config.fromfile(str(REPO_ROOT / 'configs/_base_/datasets/demo_detection.py')).metainfo
    with pytest.raises(AssertionError, match='palette'):   # the demo's three colours
        draw(dict(classes=FIVE, palette=demo['palette']), 5)
