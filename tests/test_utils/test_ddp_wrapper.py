"""The default DDP wrapper of distributed runs: gradients as bucket views, the config's own
find_unused_parameters, and a config's model_wrapper_cfg left alone."""
from mmengine.config import Config

from detr_plugin.utils import set_default_model_wrapper


def test_distributed_runs_get_bucket_view_gradients():
    cfg = Config(dict(launcher='pytorch', find_unused_parameters=True))
    set_default_model_wrapper(cfg)
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel', broadcast_buffers=False,
                                         find_unused_parameters=True, gradient_as_bucket_view=True)
    cfg = Config(dict(launcher='slurm'))
    set_default_model_wrapper(cfg)
    assert cfg.model_wrapper_cfg['find_unused_parameters'] is False


def test_single_process_and_explicit_wrappers_are_left_alone():
    cfg = Config(dict(launcher='none'))
    set_default_model_wrapper(cfg)
    assert cfg.get('model_wrapper_cfg') is None
    own = dict(type='MMDistributedDataParallel', static_graph=True)
    cfg = Config(dict(launcher='pytorch', model_wrapper_cfg=own))
    set_default_model_wrapper(cfg)
    assert cfg.model_wrapper_cfg == own
