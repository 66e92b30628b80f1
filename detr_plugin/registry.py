"""Registries of detr_plugin: children of mmdet's, with scope ``detr_plugin``.

Our names never collide with mmdet's (``DETR`` and ``DETRHead`` exist in both), and a lookup
that misses here falls back to mmdet and then mmengine, so a config in our scope still finds
``ResNet``, ``CocoDataset`` or ``CocoMetric``. Every registry mmdet defines has a child here:
a scope missing a registry would make mmengine fall back to its root and miss mmdet's modules.

mmengine's fallback reads the parents' registered names without running the parents' lazy
imports (their ``locations``), so each child also lists its ancestors' locations: without them,
mmdet's ``browse_dataset.py`` or ``DetInferencer(..., scope='detr_plugin')`` on one of our configs
failed with 'DetLocalVisualizer is not in the detr_plugin::visualizer registry' whenever nothing
had imported ``mmdet.visualization`` yet.

mmengine 0.10 resolves ``_base_ = 'pkg::path'`` only for the packages in its table
``MODULE2PACKAGE`` (OpenMMLab's; open-mmlab/mmengine#1410), although the installed-package
layout it reads (``pkg/.mim/configs``) is open to any package. Our entry in that table lets a
config inherit ``'detr_plugin::rtdetr/rtdetr_r18vd_8xb2-72e_coco.py'`` from an installed
detr_plugin, once detr_plugin is imported (our tools import it before reading a config).
"""
from mmdet import registry as mmdet_registry
from mmengine.config.utils import MODULE2PACKAGE
from mmengine.registry import DefaultScope, Registry

MODULE2PACKAGE.setdefault('detr_plugin', 'detr_plugin')


def _child(parent: Registry, *locations: str) -> Registry:
    """A registry under ``parent`` importing ``locations`` and then its ancestors' on first use."""
    inherited = []
    ancestor = parent
    while ancestor is not None:
        inherited += ancestor._locations
        ancestor = ancestor.parent
    return Registry(parent.name, parent=parent, scope='detr_plugin',
                    locations=list(locations) + inherited)


RUNNERS = _child(mmdet_registry.RUNNERS)
RUNNER_CONSTRUCTORS = _child(mmdet_registry.RUNNER_CONSTRUCTORS)
LOOPS = _child(mmdet_registry.LOOPS)
HOOKS = _child(mmdet_registry.HOOKS, 'detr_plugin.engine')
DATASETS = _child(mmdet_registry.DATASETS, 'detr_plugin.datasets')
DATA_SAMPLERS = _child(mmdet_registry.DATA_SAMPLERS)
TRANSFORMS = _child(mmdet_registry.TRANSFORMS, 'detr_plugin.datasets.transforms')
MODELS = _child(mmdet_registry.MODELS, 'detr_plugin.models')
MODEL_WRAPPERS = _child(mmdet_registry.MODEL_WRAPPERS)
WEIGHT_INITIALIZERS = _child(mmdet_registry.WEIGHT_INITIALIZERS)
OPTIMIZERS = _child(mmdet_registry.OPTIMIZERS)
OPTIM_WRAPPERS = _child(mmdet_registry.OPTIM_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = _child(mmdet_registry.OPTIM_WRAPPER_CONSTRUCTORS, 'detr_plugin.engine')
PARAM_SCHEDULERS = _child(mmdet_registry.PARAM_SCHEDULERS)
METRICS = _child(mmdet_registry.METRICS)
EVALUATOR = _child(mmdet_registry.EVALUATOR)
TASK_UTILS = _child(mmdet_registry.TASK_UTILS, 'detr_plugin.models.task_modules')
VISUALIZERS = _child(mmdet_registry.VISUALIZERS)
VISBACKENDS = _child(mmdet_registry.VISBACKENDS)
LOG_PROCESSORS = _child(mmdet_registry.LOG_PROCESSORS)


def build_in_scope(registry: Registry, cfg, **kwargs):
    """Builds ``cfg`` with ``detr_plugin`` as the default scope.

    Our components build their parts through this, so a model named ``detr_plugin.DETR`` in a
    config of another scope (say mmdet's) still gets our ``DETRHead`` and ``HungarianAssigner``
    rather than mmdet's classes of the same names; mmdet's own parts (``ResNet``) are found
    through the parent registry, and ``mmdet.X`` still selects mmdet's explicitly.
    """
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        return registry.build(cfg, **kwargs)
