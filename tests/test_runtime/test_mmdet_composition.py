"""detr_plugin inside a plain mmdet config: scope resolution, Runner, mmdet.apis, bad configs."""
import copy

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

MMDET_RUNTIME = dict(
    default_scope='mmdet',
    custom_imports=dict(imports=['detr_plugin'], allow_failed_imports=False),
    default_hooks=dict(timer=dict(type='IterTimerHook'),
                       logger=dict(type='LoggerHook', interval=1),
                       checkpoint=dict(type='CheckpointHook', interval=1)),
    env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo')),
    log_level='WARNING')


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory, demo_runs):
    root = tmp_path_factory.mktemp('demo')
    demo_runs.load_make_demo_dataset().make_demo_dataset(str(root), seed=3, num_train=4, num_val=2)
    return root


def our_model_cfg():
    """The DETR demo model, written for a config whose default scope is mmdet."""
    model = Config.fromfile('configs/detr/detr_r18_1xb8-demo.py').model.to_dict()
    model.update(num_queries=5)
    model['encoder']['num_layers'] = 1
    model['decoder']['num_layers'] = 1
    return model


def mmdet_config(demo_data, work_dir, model):
    """A config in mmdet's own style: mmdet's scope, CocoDataset, pipeline and CocoMetric."""
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                dict(type='Resize', scale=(64, 64), keep_ratio=True), dict(type='PackDetInputs')]
    dataset = dict(type='CocoDataset', data_root=str(demo_data) + '/',
                   metainfo=dict(classes=('square', 'circle', 'triangle')),
                   ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
                   filter_cfg=dict(filter_empty_gt=False), pipeline=pipeline)
    val_dataset = dict(dataset, ann_file='annotations/instances_val.json',
                       data_prefix=dict(img='val/'), test_mode=True)
    loader = dict(batch_size=2, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False))
    evaluator = dict(type='CocoMetric', ann_file=f'{demo_data}/annotations/instances_val.json',
                     metric='bbox')
    return Config(dict(
        copy.deepcopy(MMDET_RUNTIME), model=model, work_dir=str(work_dir),
        train_dataloader=dict(loader, dataset=dataset),
        val_dataloader=dict(loader, dataset=val_dataset), val_evaluator=evaluator,
        test_dataloader=dict(loader, dataset=val_dataset), test_evaluator=evaluator,
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2),
        val_cfg=dict(type='ValLoop'), test_cfg=dict(type='TestLoop'),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-4),
                           clip_grad=dict(max_norm=0.1))))


@pytest.mark.parametrize('how', ['_scope_', 'type_prefix'])
def test_plain_mmdet_config_uses_our_components(demo_data, tmp_path, how):
    from mmdet.models.dense_heads import DETRHead as MMDetDETRHead
    from detr_plugin.models import DETR, DETRHead
    from detr_plugin.models.task_modules import HungarianAssigner
    model = our_model_cfg()
    if how == '_scope_':
        model['_scope_'] = 'detr_plugin'
    else:  # only the top-level type names our scope; nested names then resolve in it too
        model['type'] = 'detr_plugin.DETR'
    cfg = mmdet_config(demo_data, tmp_path, model)
    runner = Runner.from_cfg(cfg)
    assert DefaultScope.get_current_instance().scope_name == "mmdet"
    assert type(runner.model) is DETR
    assert type(runner.model.bbox_head) is DETRHead and not isinstance(runner.model.bbox_head,
                                                                       MMDetDETRHead)
    assert type(runner.model.bbox_head.assigner) is HungarianAssigner
    runner.train()
    metrics = runner.test()
    assert 'coco/bbox_mAP' in metrics


def test_init_detector_and_inference_detector(demo_data):
    from mmdet.apis import inference_detector, init_detector
    cfg = Config.fromfile('configs/detr/detr_r18_1xb8-demo.py')
    cfg.model.num_queries = 5
    model = init_detector(cfg, checkpoint=None, device='cpu')
    image = np.random.default_rng(0).integers(0, 255, (96, 120, 3), dtype=np.uint8)
    result = inference_detector(model, image)
    boxes = result.pred_instances.bboxes
    assert boxes.shape == (5, 4)
    assert (boxes[:, 2] <= 120 + 1e-3).all() and (boxes[:, 3] <= 96 + 1e-3).all()  # original size


def test_num_classes_mismatch_fails_at_start_naming_both(demo_data, tmp_path):
    model = our_model_cfg()
    model['_scope_'] = 'detr_plugin'
    model['bbox_head']['num_classes'] = 80
    cfg = mmdet_config(demo_data, tmp_path, model)
    cfg.custom_hooks = [dict(type='detr_plugin.NumClassesCheckHook')]
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match=r'num_classes is 80 .* has 3 classes'):
        runner.train()
    assert runner.iter == 0  # failed before the first iteration


def test_demo_config_checks_num_classes():
    cfg = Config.fromfile('configs/detr/detr_r18_1xb8-demo.py')
    assert any(h['type'] == 'NumClassesCheckHook' for h in cfg.get('custom_hooks', []))


@pytest.mark.parametrize('config', ['configs/rtdetr/rtdetr_r18vd_1xb8-demo.py',
                                    'configs/deformable_detr/deformable-detr_r18_1xb8-demo.py'])
def test_scoped_type_builds_our_parts_under_mmdet_scope(config):
    """type='detr_plugin.X' in an mmdet-scoped config: heads and assigner are ours, not mmdet's."""
    from mmengine.registry import MODELS as ROOT_MODELS
    from detr_plugin.models.task_modules import HungarianAssigner
    model = Config.fromfile(config).model.to_dict()
    model['type'] = 'detr_plugin.' + model['type']
    with DefaultScope.overwrite_default_scope('mmdet'):
        detector = ROOT_MODELS.build(model)
    assert type(detector).__module__.startswith('detr_plugin.')
    assert type(detector.bbox_head).__module__.startswith('detr_plugin.')
    assert type(detector.bbox_head.assigner) is HungarianAssigner


MMDET_TOOLS_SCRIPT = r'''
import sys

import numpy as np
from mmengine.config import Config
from mmengine.registry import init_default_scope

import detr_plugin  # noqa: F401  (what custom_imports or default_scope='detr_plugin' import)
from mmdet.registry import DATASETS, VISUALIZERS

# mmdet's tools/analysis_tools/browse_dataset.py: the config's scope, then mmdet's registries
cfg = Config.fromfile(sys.argv[1])
init_default_scope(cfg.get('default_scope', 'mmdet'))
assert 'mmdet.visualization' not in sys.modules, 'the check needs a fresh interpreter'
visualizer = VISUALIZERS.build(cfg.visualizer)
dataset = DATASETS.build(dict(cfg.val_dataloader.dataset, data_root=sys.argv[2]))
print('browse_dataset', type(visualizer).__name__, type(dataset).__name__, len(dataset))

from mmdet.apis import DetInferencer  # noqa: E402
inferencer = DetInferencer(model=cfg, scope='detr_plugin', device='cpu', show_progress=False)
image = np.random.default_rng(0).integers(0, 255, (96, 120, 3), dtype=np.uint8)
predictions = inferencer(image, no_save_pred=True)['predictions'][0]
print('DetInferencer', type(inferencer.model).__name__, len(predictions['bboxes']))
'''


def test_mmdet_tools_find_mmdet_modules_from_our_scope(demo_data, tmp_path):
    """mmdet's browse_dataset.py and DetInferencer(scope='detr_plugin') on our RT-DETR config, in
    a fresh interpreter: our child registries run mmdet's lazy imports when a name falls back to
    mmdet (DetLocalVisualizer was 'not in the detr_plugin::visualizer registry')."""
    import subprocess
    import sys
    script = tmp_path / 'mmdet_tools.py'
    script.write_text(MMDET_TOOLS_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py', f'{demo_data}/'],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'browse_dataset DetLocalVisualizer CocoDataset 2' in result.stdout
    assert 'DetInferencer RTDETR' in result.stdout
