from .augmentation_window_hook import AugmentationWindowHook
from .checkpoint_check_hook import CheckpointCheckHook
from .cpu_affinity_hook import CPUAffinityHook
from .dataset_check_hook import DatasetCheckHook
from .num_classes_check_hook import NumClassesCheckHook
from .restart_from_best_hook import RestartFromBestHook
from .rng_state_hook import RNGStateHook
from .safe_checkpoint_hook import SafeCheckpointHook
from .stop_augmentation_hook import StopAugmentationHook

__all__ = ['AugmentationWindowHook', 'CheckpointCheckHook', 'CPUAffinityHook', 'DatasetCheckHook',
           'NumClassesCheckHook', 'RestartFromBestHook', 'RNGStateHook', 'SafeCheckpointHook',
           'StopAugmentationHook']
