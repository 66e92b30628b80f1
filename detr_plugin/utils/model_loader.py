"""The one way the tools get a detector: built from a config, weights from a checkpoint (checked
by :func:`~detr_plugin.utils.checkpoint_loading.fit_to_model`), class names set, eval mode."""
import copy
from typing import Optional, Union

from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS, init_default_scope
from torch import nn

from .checkpoint_loading import load_detector_checkpoint
from .setup_env import register_all_modules


def load_config(config: Union[str, Config], cfg_options: Optional[dict] = None) -> Config:
    """The config of a file (or a copy of a Config), with ``cfg_options`` (as --cfg-options)."""
    cfg = Config.fromfile(config) if isinstance(config, str) else copy.deepcopy(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def build_detector(config: Union[str, Config], cfg_options: Optional[dict] = None) -> nn.Module:
    """The detector of ``config`` (ours, or mmdet's own; ``cfg_options`` edit it first) as built:
    no weights loaded, the backbone's pretrained ``init_cfg`` dropped, torch SyncBatchNorms
    reverted to BatchNorms; ``model.cfg`` is the config, as mmdet's ``init_detector`` sets it
    for ``inference_detector``."""
    cfg = load_config(config, cfg_options)
    register_all_modules(init_default_scope=False)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    if 'init_cfg' in cfg.model.get('backbone', {}):
        cfg.model.backbone.init_cfg = None  # the checkpoint has the weights; nothing to download
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.cfg = cfg
    return model


def load_weights(model: nn.Module, checkpoint: Optional[str], device: str = 'cpu',
                 partial: bool = False, trust: bool = False) -> nn.Module:
    """``model`` (from :func:`build_detector`) with the weights of ``checkpoint`` and its
    ``dataset_meta`` (:func:`dataset_meta_of`), in eval mode on ``device``.

    ``checkpoint``: ours (an mmengine checkpoint or a bare state dict, a DDP ``module.`` prefix,
    EMAHook's averaged weights) or an original authors' DETR / Deformable DETR / RT-DETR file,
    converted on the fly; read weights-only unless ``trust`` (full unpickling: only for files
    you trust). One that does not fit the model raises CheckpointError (one line) unless
    ``partial``. None: the model as initialised for training (``init_weights``).
    """
    meta = {}
    if checkpoint is None:
        model.init_weights()
    else:
        meta = load_detector_checkpoint(model, checkpoint, partial=partial, trust=trust).meta
    model.dataset_meta = dataset_meta_of(model.cfg, meta)
    return model.to(device).eval()


def load_detector(config: Union[str, Config], checkpoint: Optional[str] = None,
                  device: str = 'cpu', cfg_options: Optional[dict] = None, partial: bool = False,
                  trust: bool = False) -> nn.Module:
    """:func:`build_detector` then :func:`load_weights`: the detector every tool runs."""
    return load_weights(build_detector(config, cfg_options), checkpoint, device, partial, trust)


def dataset_meta_of(cfg: Config, meta: dict) -> dict:
    """The checkpoint's ``meta.dataset_meta`` (classes, palette; mmdet 2.x: ``meta.CLASSES``),
    else the ``metainfo`` of the config's test dataset, else {} (labels drawn as numbers)."""
    if meta.get('dataset_meta'):
        return dict(meta['dataset_meta'])
    if meta.get('CLASSES'):
        return dict(classes=tuple(meta['CLASSES']))
    metainfo = cfg.get('test_dataloader', {}).get('dataset', {}).get('metainfo') or {}
    return dict(metainfo)
