"""configs/dfine/dfine_hgnetv2-s_1xb8-deepforest_trees.py: D-FINE-S from random weights on
deepforest's tree crowns, with the data, schedule, batch and evaluation of RT-DETR's deepforest
config, so that their mAP curves compare like with like.

References: configs/rtdetr/rtdetr_r18vd_1xb8-deepforest_trees.py; the D-FINE-S COCO config (itself
checked against the original's YAMLs in test_dfine_deim_configs.py); the crown counts of deepforest
2.1.0's files (as in tests/test_tools/test_deepforest_trees_converter.py). The dataset test is
skipped when deepforest 2.1.0 is not installed (``pip install --no-deps deepforest==2.1.0``).
"""
import importlib.metadata
import pathlib

import pytest
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from detr_plugin.registry import DATASETS, MODELS

ROOT = pathlib.Path(__file__).resolve().parents[2]
DFINE = 'configs/dfine/dfine_hgnetv2-s_1xb8-deepforest_trees.py'
DFINE_COCO = 'configs/dfine/dfine_hgnetv2-s_8xb4-132e_coco.py'
RTDETR = 'configs/rtdetr/rtdetr_r18vd_1xb8-deepforest_trees.py'
CONVERTER = 'tools/dataset_converters/deepforest_trees_to_coco.py'
DEEPFOREST = '2.1.0'


def load(path: str) -> Config:
    return Config.fromfile(str(ROOT / path))


def differences(ours: dict, other: dict, prefix: str = '') -> dict:
    """{dotted key: (ours, other)} for every leaf (or whole non-dict value) that differs."""
    out = {}
    for key in set(ours) | set(other):
        a, b = ours.get(key, '<missing>'), other.get(key, '<missing>')
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(differences(a, b, f'{prefix}{key}.'))
        elif a != b:
            out[f'{prefix}{key}'] = (a, b)
    return out


def deepforest_version():
    try:
        return importlib.metadata.version('deepforest')
    except importlib.metadata.PackageNotFoundError:
        return None


def test_data_schedule_and_evaluation_are_rtdetrs():
    ours, rtdetr = load(DFINE), load(RTDETR)
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator',
                'test_evaluator', 'train_cfg', 'val_cfg', 'test_cfg', 'param_scheduler',
                'default_hooks'):
        assert ours[key] == rtdetr[key], key
    # the same inputs (RGB in [0, 1], multi-scale 256-384), queries and detections per image
    assert ours.model.data_preprocessor == rtdetr.model.data_preprocessor
    assert ours.model.decoder.num_queries == rtdetr.model.decoder.num_queries == 100
    assert ours.model.test_cfg.max_per_img == rtdetr.model.test_cfg.max_per_img == 100
    assert ours.train_dataloader.batch_size == 8 and ours.train_cfg.max_epochs == 200
    assert tuple(ours.train_dataloader.dataset.metainfo['classes']) == ('tree', )


def test_model_is_dfine_s_from_scratch_with_one_class():
    ours, coco = load(DFINE), load(DFINE_COCO)
    diff = differences(ours.model.to_dict(), coco.model.to_dict())
    assert set(diff) == {'backbone.init_cfg', 'bbox_head.num_classes', 'decoder.num_queries',
                         'test_cfg.max_per_img', 'data_preprocessor.batch_augments'}
    assert diff['backbone.init_cfg'] == (None, dict(type='Pretrained', checkpoint='hgnetv2://B0'))
    assert diff['bbox_head.num_classes'] == (1, 80)
    # D-FINE's EMA (1000 warm-up updates, not RT-DETR's 2000) and optimizer
    assert ours.custom_hooks == coco.custom_hooks
    assert ours.optim_wrapper.optimizer == coco.optim_wrapper.optimizer
    assert ours.optim_wrapper.clip_grad == coco.optim_wrapper.clip_grad


def test_each_tensor_trains_as_in_dfine_s_with_the_backbone_at_full_rate():
    ours, coco = load(DFINE), load(DFINE_COCO)
    model = MODELS.build(ours.model)

    def settings(cfg):
        optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
        return {id(p): (g['lr'], g['weight_decay']) for g in optimizer.param_groups
                for p in g['params']}

    ours_by_id, coco_by_id = settings(ours), settings(coco)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(ours_by_id) == len(coco_by_id) == len(named)
    for name, param in named:
        lr, decay = coco_by_id[id(param)]
        if name.startswith('backbone.'):
            assert lr == pytest.approx(1e-4)   # COCO: half of 2e-4 for ImageNet weights
            lr = 2e-4
        assert ours_by_id[id(param)] == pytest.approx((lr, decay), rel=1e-12, abs=0), name
    # the original's '^(?=.*backbone)(?=.*norm|bn).*$' matches no backbone name: BatchNorms decay
    assert ours_by_id[id(model.backbone.stem.stem1.bn.weight)] == pytest.approx((2e-4, 1e-4))


@pytest.mark.skipif(deepforest_version() != DEEPFOREST,
                    reason=f'needs deepforest {DEEPFOREST} (pip install --no-deps '
                           f'deepforest=={DEEPFOREST}); found {deepforest_version()}')
def test_datasets_read_the_converted_crowns(load_tool, tmp_path):
    load_tool(CONVERTER).main(['--out', str(tmp_path)])
    cfg = load(DFINE)
    data_root = f'{tmp_path}/'
    # crowns counted from the package's Pascal VOC files (the converter's test)
    for loader, images, crowns, size in ((cfg.train_dataloader, 58, 672, None),
                                         (cfg.val_dataloader, 12, 278, (320, 320))):
        dataset = DATASETS.build(dict(loader.dataset, data_root=data_root))
        assert dataset.metainfo['classes'] == ('tree', )
        assert len(dataset) == images
        labels = [i['bbox_label'] for k in range(images)
                  for i in dataset.get_data_info(k)['instances']]
        assert len(labels) == crowns and set(labels) == {0}
        if size:
            assert tuple(dataset[0]['inputs'].shape) == (3, *size)
    val = cfg.val_dataloader.dataset
    assert cfg.val_evaluator.ann_file == val.data_root + val.ann_file  # the crowns counted above
