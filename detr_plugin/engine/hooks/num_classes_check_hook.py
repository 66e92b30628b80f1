"""Fails a run at its start when the model's class count disagrees with the dataset's."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from detr_plugin.registry import HOOKS


@HOOKS.register_module()
class NumClassesCheckHook(Hook):
    """Compares every head's ``num_classes`` with ``len(dataset.metainfo['classes'])``.

    Runs before training, validation and testing, so a wrong config stops before the first
    iteration with a ValueError naming both numbers (instead of an index error deep in a loss,
    or silently wrong labels).
    """

    def before_train(self, runner) -> None:
        self._check(runner, runner.train_dataloader.dataset, 'train_dataloader')

    def before_val(self, runner) -> None:
        self._check(runner, runner.val_dataloader.dataset, 'val_dataloader')

    def before_test(self, runner) -> None:
        self._check(runner, runner.test_dataloader.dataset, 'test_dataloader')

    @staticmethod
    def _check(runner, dataset, where: str) -> None:
        classes = dataset.metainfo.get('classes')
        if classes is None:
            runner.logger.warning(f'{where}: the dataset has no metainfo classes; '
                                  'cannot check num_classes')
            return
        if isinstance(classes, str):
            raise ValueError(f'{where}: metainfo classes must be a tuple of names, got the string '
                             f'{classes!r} (write ({classes!r},) for one class)')
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        for name, module in model.named_modules():
            if name.endswith('head') and hasattr(module, 'num_classes'):
                if module.num_classes != len(classes):
                    raise ValueError(
                        f'model.{name}.num_classes is {module.num_classes} but the dataset of '
                        f'{where} has {len(classes)} classes {tuple(classes)}; set num_classes='
                        f'{len(classes)} in the config (or fix metainfo.classes)')
