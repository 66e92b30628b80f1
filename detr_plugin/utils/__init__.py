from .checkpoint_loading import (TRUST_OPTION, CheckpointError, KeyComparison, Weights,
                                 load_detector_checkpoint, read_checkpoint)
from .cpu_distributed import setup_cpu_distributed
from .ddp_wrapper import set_default_model_wrapper
from .model_loader import (build_detector, dataset_meta_of, load_config, load_detector,
                           load_weights)
from .safe_globals import allow_checkpoint_types
from .setup_env import register_all_modules

allow_checkpoint_types()  # our checkpoints load weights-only, in our tools and in mmengine's

__all__ = ['TRUST_OPTION', 'CheckpointError', 'KeyComparison', 'Weights', 'build_detector',
           'dataset_meta_of', 'load_config', 'load_detector', 'load_detector_checkpoint',
           'load_weights', 'read_checkpoint', 'register_all_modules', 'set_default_model_wrapper',
           'setup_cpu_distributed']
