"""Fine-tuning from a checkpoint with another number of classes (README: "Fine-tuning from COCO
weights"), and resuming: CheckpointCheckHook sees the checkpoint the Runner loads before its
weights reach the model, as mmengine's ``after_load_checkpoint`` hooks do."""
import pathlib

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner.checkpoint import load_state_dict

from detr_plugin.engine.hooks.checkpoint_check_hook import CheckpointCheckHook
from detr_plugin.registry import MODELS
from detr_plugin.utils import CheckpointError

DEMO = pathlib.Path(__file__).resolve().parents[2] / 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py'


def build(num_classes, seed):
    cfg = Config.fromfile(str(DEMO)).model
    cfg.bbox_head.num_classes = num_classes
    torch.manual_seed(seed)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


@pytest.fixture(scope='module')
def coco_like():
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        return build(num_classes=80, seed=0)


def test_load_from_keeps_fresh_class_heads_and_says_so_in_one_line(coco_like, demo_runs):
    mine = build(num_classes=3, seed=1)
    fresh = {k: v.clone() for k, v in mine.state_dict().items()}
    runner = demo_runs.fake_runner(mine, 'coco.pth')
    checkpoint = {'state_dict': {'module.' + k: v for k, v in coco_like.state_dict().items()},
                  'meta': {}}
    CheckpointCheckHook(partial=True).after_load_checkpoint(runner, checkpoint)
    # what mmengine's Runner.load_checkpoint does next; it must now find nothing to complain of
    load_state_dict(mine, checkpoint['state_dict'], strict=True)
    source = coco_like.state_dict()
    skipped = [k for k, v in mine.state_dict().items() if v.shape != source[k].shape]
    assert skipped and all('cls_branch' in k or 'label_embed' in k for k in skipped)
    for key, value in mine.state_dict().items():
        expected = fresh[key] if key in skipped else source[key]
        torch.testing.assert_close(value, expected, msg=key)
    [line] = runner.logger.handlers[0].lines
    assert '\n' not in line and "'coco.pth'" in line
    assert f'{len(skipped)} keys of another shape' in line and skipped[0] in line


def test_resume_refuses_a_checkpoint_of_another_model(coco_like, demo_runs):
    mine = build(num_classes=3, seed=1)
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    checkpoint = {'state_dict': coco_like.state_dict(), 'meta': {}}
    with pytest.raises(CheckpointError, match='keys of another shape') as error:
        CheckpointCheckHook(partial=False).after_load_checkpoint(
            demo_runs.fake_runner(mine, 'w/epoch_3.pth'), checkpoint)
    assert '\n' not in str(error.value) and 'w/epoch_3.pth' in str(error.value)
    assert all(torch.equal(v, before[k]) for k, v in mine.state_dict().items())
