from .batch_mixup import BatchMixUp

__all__ = ['BatchMixUp']
