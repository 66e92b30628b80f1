from .num_classes_check_hook import NumClassesCheckHook

__all__ = ['NumClassesCheckHook']
