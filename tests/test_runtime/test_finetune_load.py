"""Fine-tuning from a checkpoint with another number of classes (README: "Fine-tuning from COCO
weights"): mmengine's non-strict load, as the Runner's ``load_from`` does it, copies every tensor
of matching shape and leaves the class-specific ones at their fresh initialisation."""
import pathlib

import torch
from mmengine.config import Config
from mmengine.runner.checkpoint import load_checkpoint

from detr_plugin.registry import MODELS

DEMO = pathlib.Path(__file__).resolve().parents[2] / 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py'


def build(num_classes, seed):
    cfg = Config.fromfile(str(DEMO)).model
    cfg.bbox_head.num_classes = num_classes
    torch.manual_seed(seed)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def test_load_from_a_checkpoint_with_other_classes(tmp_path):
    coco_like = build(num_classes=80, seed=0)
    path = tmp_path / 'coco.pth'
    torch.save(dict(state_dict=coco_like.state_dict()), path)
    mine = build(num_classes=3, seed=1)
    fresh = {k: v.clone() for k, v in mine.state_dict().items()}
    load_checkpoint(mine, str(path), map_location='cpu', strict=False)
    source = coco_like.state_dict()
    skipped = [k for k, v in mine.state_dict().items() if v.shape != source[k].shape]
    assert skipped and all('cls_branch' in k or 'label_embed' in k for k in skipped)
    for key, value in mine.state_dict().items():
        expected = fresh[key] if key in skipped else source[key]
        torch.testing.assert_close(value, expected, msg=key)
