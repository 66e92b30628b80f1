from .checkpoint_loading import allow_full_checkpoint_loading
from .setup_env import register_all_modules

__all__ = ['allow_full_checkpoint_loading', 'register_all_modules']
