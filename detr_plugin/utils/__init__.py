from .checkpoint_loading import (CheckpointError, allow_full_checkpoint_loading,
                                 load_detector_checkpoint)
from .cpu_distributed import setup_cpu_distributed
from .ddp_wrapper import set_default_model_wrapper
from .setup_env import register_all_modules

__all__ = ['CheckpointError', 'allow_full_checkpoint_loading', 'load_detector_checkpoint',
           'register_all_modules', 'set_default_model_wrapper', 'setup_cpu_distributed']
