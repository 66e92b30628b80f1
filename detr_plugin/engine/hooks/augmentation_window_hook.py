"""DEIM's data-augmentation policy: each augmentation runs only within its window of epochs."""
from typing import Dict, Sequence, Tuple

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import nn

from detr_plugin.registry import HOOKS
from .stop_augmentation_hook import type_names


@HOOKS.register_module()
class AugmentationWindowHook(Hook):
    """Each transform of the training pipeline and each batch augment of the data preprocessor
    named in ``windows`` runs only in the epochs ``start <= epoch < stop`` (0-based, as DEIM's
    ``policy.epoch`` and ``mixup_epochs``); the others always run.

    DEIM's Dense O2O with ``policy: {epoch: [4, 29, 50]}``, ``mixup_epochs: [4, 29]`` and the
    collate function's ``stop_epoch: 50`` reads::

        windows=dict(Mosaic=(4, 29), BatchMixUp=(4, 29), PhotoMetricDistortion=(4, 50),
                     SkipAfterMosaic=(4, 50), BatchSyncRandomResize=(0, 50))

    The hook keeps the pipeline as built and sets, before every epoch, the transforms that epoch
    runs, so a window can open after the first epoch, and a resumed run gets its epoch's set.
    Persistent workers are restarted when the set changes. The pipeline is a Compose's (found
    through dataset wrappers with a ``dataset``) or ``MultiImageMixDataset``'s own. A name that is
    neither in the pipeline nor among the batch augments is an error at the start of training.
    Use it instead of ``StopAugmentationHook`` (both rewrite the pipeline).

    Args:
        windows: transform or batch-augment type name -> (start, stop) epochs; a transform
            name also stands for its subclasses (``Expand`` for ``ZeroFillExpand``).
    """

    def __init__(self, windows: Dict[str, Sequence[int]]) -> None:
        self.windows: Dict[str, Tuple[int, int]] = {}
        for name, window in windows.items():
            start, stop = window
            if not 0 <= start <= stop:
                raise ValueError(f'AugmentationWindowHook: window of {name} must be '
                                 f'(start, stop) with 0 <= start <= stop, got {window}')
            self.windows[name] = (int(start), int(stop))
        self.active = None  # names running now; None before the first epoch

    def before_train(self, runner) -> None:
        owner = _pipeline_owner(runner)
        if isinstance(owner.pipeline, list):  # MultiImageMixDataset: transforms and type names
            self.transforms = list(zip(owner.pipeline, owner.pipeline_types))
        else:
            self.transforms = [(t, None) for t in owner.pipeline.transforms]
        self.batch_augments = list(_preprocessor(runner).batch_augments or [])
        names = set().union(*(type_names(t) for t, _ in self.transforms))
        names |= {type(a).__name__ for a in self.batch_augments}
        missing = [name for name in self.windows if name not in names]
        if missing:
            raise ValueError(f'AugmentationWindowHook: {missing} are neither transforms of the '
                             f'training pipeline nor batch augments (there are {sorted(names)}); '
                             f'fix custom_hooks')
        self.active = None

    def before_train_epoch(self, runner) -> None:
        active = frozenset(name for name, (start, stop) in self.windows.items()
                           if start <= runner.epoch < stop)
        if active == self.active:
            return
        owner = _pipeline_owner(runner)
        kept = [(t, n) for t, n in self.transforms if self._runs(t, active)]
        if isinstance(owner.pipeline, list):
            owner.pipeline = [t for t, _ in kept]
            owner.pipeline_types = [n for _, n in kept]
        else:
            owner.pipeline.transforms = [t for t, _ in kept]
        augments = [a for a in self.batch_augments if self._runs(a, active)]
        _preprocessor(runner).batch_augments = nn.ModuleList(augments) if augments else None
        loader = runner.train_dataloader
        if getattr(loader, 'persistent_workers', False):
            loader._iterator = None  # persistent workers hold the old pipeline: start new ones
        runner.logger.info(f'AugmentationWindowHook: epoch {runner.epoch}: running '
                           f'{sorted(active)}, not {sorted(set(self.windows) - active)}')
        self.active = active

    def _runs(self, transform, active) -> bool:
        windowed = type_names(transform) & self.windows.keys()  # Expand also for ZeroFillExpand
        return not windowed or bool(windowed & active)


def _pipeline_owner(runner):
    """The training dataset holding the pipeline (through wrappers with a ``dataset``)."""
    dataset = runner.train_dataloader.dataset
    while not hasattr(dataset, 'pipeline') and hasattr(dataset, 'dataset'):
        dataset = dataset.dataset
    return dataset


def _preprocessor(runner) -> nn.Module:
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    return model.data_preprocessor

