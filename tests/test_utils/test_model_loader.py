"""load_detector: a config and a checkpoint give the model with those weights, class names and
config edits, in eval mode; a checkpoint of another class count is refused unless partial."""
import pathlib

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from detr_plugin.registry import MODELS
from detr_plugin.utils import CheckpointError, load_detector

DEMO = pathlib.Path(__file__).resolve().parents[2] / 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py'
CLASSES = ('square', 'circle', 'triangle')


@pytest.fixture(scope='module')
def demo():
    """(config, state dict of a model built here with seed 0, independently of the loader)."""
    cfg = Config.fromfile(str(DEMO))
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        return cfg, MODELS.build(cfg.model).state_dict()


def test_loads_weights_meta_and_cfg_options(demo, tmp_path):
    cfg, state_dict = demo
    path = tmp_path / 'ddp.pth'
    torch.save({'state_dict': {'module.' + k: v for k, v in state_dict.items()},
                'meta': {'dataset_meta': {'classes': ('a', 'b', 'c'), 'palette': [(1, 2, 3)] * 3}}},
               path)
    model = load_detector(str(DEMO), str(path),
                          cfg_options={'model.test_cfg.max_per_img': 7})
    assert not model.training
    assert model.dataset_meta == {'classes': ('a', 'b', 'c'), 'palette': [(1, 2, 3)] * 3}
    assert model.cfg.model.test_cfg.max_per_img == 7 and model.bbox_head.test_cfg['max_per_img'] == 7
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_dict[key]), key


def test_class_names_from_the_config_without_checkpoint_meta(demo, tmp_path):
    cfg, state_dict = demo
    torch.save(state_dict, tmp_path / 'bare.pth')
    model = load_detector(cfg, str(tmp_path / 'bare.pth'))
    assert tuple(model.dataset_meta['classes']) == CLASSES
    assert cfg.model.backbone.get('init_cfg', 'unset') == Config.fromfile(str(DEMO)).model.backbone.get(
        'init_cfg', 'unset'), 'the caller\'s config is not edited'


def test_another_class_count_is_refused_unless_partial(demo, tmp_path):
    cfg, state_dict = demo
    coco = Config.fromfile(str(DEMO))
    coco.model.bbox_head.num_classes = 80
    torch.save({'state_dict': MODELS.build(coco.model).state_dict()}, tmp_path / 'coco.pth')
    with pytest.raises(CheckpointError, match=r'keys of another shape \[.*cls_branch'):
        load_detector(cfg, str(tmp_path / 'coco.pth'))
    with pytest.warns(UserWarning, match='keys of another shape'):
        model = load_detector(cfg, str(tmp_path / 'coco.pth'), partial=True)
    assert model.bbox_head.num_classes == 3
