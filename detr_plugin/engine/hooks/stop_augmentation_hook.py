"""RT-DETRv2's ``stop_epoch`` policy: the last epochs train without strong augmentation."""
from typing import Sequence, Set

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from detr_plugin.registry import HOOKS


@HOOKS.register_module()
class StopAugmentationHook(Hook):
    """From epoch ``stop_epoch`` on (0-based, as the original's ``policy.epoch`` and the collate
    function's ``stop_epoch``), the training pipeline drops the transforms named in ``transforms``
    and the data preprocessor its batch augments (batch-level multi-scale resizing).

    Also after ``--resume`` into those epochs. A name in ``transforms`` that the training pipeline
    does not hold is an error at the start of training, not a silent no-op.

    Args:
        stop_epoch: first epoch without the augmentations.
        transforms: type names of the pipeline's transforms to drop (the original drops
            RandomPhotometricDistort, RandomZoomOut and RandomIoUCrop); a name also stands for
            its subclasses (``Expand`` for ``ZeroFillExpand``).
        stop_batch_augments: also stop the data preprocessor's batch augments.
    """

    def __init__(self, stop_epoch: int,
                 transforms: Sequence[str] = ('PhotoMetricDistortion', 'Expand', 'RandomIoUCrop'),
                 stop_batch_augments: bool = True) -> None:
        self.stop_epoch = stop_epoch
        self.transforms = tuple(transforms)
        self.stop_batch_augments = stop_batch_augments
        self.stopped = False

    def before_train(self, runner) -> None:
        names = set().union(*map(type_names, self._pipeline(runner).transforms))
        missing = [name for name in self.transforms if name not in names]
        if missing:
            raise ValueError(f'StopAugmentationHook: transforms {missing} are not in the training '
                             f'pipeline (it holds {sorted(names)}); fix custom_hooks')

    def before_train_epoch(self, runner) -> None:
        if self.stopped or runner.epoch < self.stop_epoch:
            return
        pipeline = self._pipeline(runner)
        pipeline.transforms = [t for t in pipeline.transforms
                               if not type_names(t) & set(self.transforms)]
        loader = runner.train_dataloader
        if getattr(loader, 'persistent_workers', False):
            loader._iterator = None  # persistent workers hold the old pipeline: start new ones
        message = f'dropped {list(self.transforms)} from the training pipeline'
        if self.stop_batch_augments:
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            model.data_preprocessor.batch_augments = None
            message += ' and the batch augments'
        runner.logger.info(f'StopAugmentationHook: epoch {runner.epoch}: {message}')
        self.stopped = True

    @staticmethod
    def _pipeline(runner):
        """The training dataset's Compose (through dataset wrappers with a ``dataset``)."""
        dataset = runner.train_dataloader.dataset
        while not hasattr(dataset, 'pipeline') and hasattr(dataset, 'dataset'):
            dataset = dataset.dataset
        return dataset.pipeline


def type_names(obj) -> Set[str]:
    """The names of ``obj``'s class and its bases: a drop-in subclass (``ZeroFillExpand``) is
    also known by the name of the transform it stands in for (``Expand``)."""
    return {cls.__name__ for cls in type(obj).__mro__}
