from .num_classes_check_hook import NumClassesCheckHook
from .rng_state_hook import RNGStateHook

__all__ = ['NumClassesCheckHook', 'RNGStateHook']
