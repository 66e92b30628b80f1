"""D-FINE's and DEIM's restart of the last stage from the best checkpoint so far."""
import os.path as osp
from typing import Optional

from mmengine.dist import barrier
from mmengine.hooks import CheckpointHook, EMAHook, Hook
from mmengine.model import is_model_wrapper
from mmengine.runner.checkpoint import _load_checkpoint

from detr_plugin.registry import HOOKS


@HOOKS.register_module()
class RestartFromBestHook(Hook):
    """At the start of epoch ``epoch`` (0-based), the model, its EMA (with its update count) and
    the optimizer state go back to the best checkpoint so far, as D-FINE's and DEIM's solvers do
    at their ``stop_epoch`` (they reload ``best_stg1.pth``); the epoch, the learning-rate
    schedule, the data order and the random streams go on.

    "Best" is the checkpoint hook's ``save_best`` metric, measured on the EMA weights when an
    EMAHook runs (mmengine validates those), as the originals do. mmengine writes best
    checkpoints without the optimizer, so its state comes from the regular checkpoint of the same
    epoch (keep it: ``max_keep_ckpts``); without that file the optimizer state goes on, with a
    warning. Without a best checkpoint yet (no validation before ``epoch``) training goes on with
    a warning. Every process reads the same files (a shared work directory in multi-node runs).

    Args:
        epoch: the epoch that starts from the best checkpoint.
    """

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def before_train(self, runner) -> None:
        hooks = [h for h in runner.hooks if isinstance(h, CheckpointHook) and h.save_best]
        if not hooks:
            raise ValueError("RestartFromBestHook needs a best checkpoint: set "
                             "default_hooks.checkpoint.save_best (e.g. 'coco/bbox_mAP')")
        self.filename_tmpl = hooks[0].filename_tmpl

    def before_train_epoch(self, runner) -> None:
        if runner.epoch != self.epoch:
            return
        barrier()  # the main process may still be writing the last best checkpoint
        path = runner.message_hub.get_info('best_ckpt')
        if path is None:
            runner.logger.warning(f'RestartFromBestHook: no best checkpoint before epoch '
                                  f'{self.epoch}; training goes on from the current weights')
            return
        self.restore(runner, path)

    def restore(self, runner, path: str) -> None:
        """Model, EMA and optimizer state from the best checkpoint ``path``."""
        checkpoint = _load_checkpoint(path, map_location='cpu')
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        emas = [h for h in runner.hooks if isinstance(h, EMAHook)]
        trained, averaged = split_ema_checkpoint(checkpoint) if emas else (
            checkpoint['state_dict'], None)
        model.load_state_dict(trained)
        if emas:
            emas[0].ema_model.load_state_dict(averaged)
        optimizer = self.optimizer_state(checkpoint, path)
        if optimizer is None:
            runner.logger.warning(f'RestartFromBestHook: the checkpoint of the epoch of {path} is '
                                  f'gone; the optimizer state goes on')
        else:
            runner.optim_wrapper.load_state_dict(optimizer)
        runner.logger.info(f'RestartFromBestHook: epoch {runner.epoch} starts from the model and '
                           f'EMA of {path}' + ('' if optimizer is None else ' and its optimizer'))

    def optimizer_state(self, checkpoint: dict, path: str) -> Optional[dict]:
        """The optimizer state of the best checkpoint's epoch, or None if not saved."""
        if 'optimizer' in checkpoint:
            return checkpoint['optimizer']
        regular = osp.join(osp.dirname(path),
                           self.filename_tmpl.format(checkpoint['meta']['epoch']))
        if not osp.isfile(regular):
            return None
        return _load_checkpoint(regular, map_location='cpu')['optimizer']


def split_ema_checkpoint(checkpoint: dict):
    """(trained weights, EMA state) of a checkpoint saved with mmengine's EMAHook, which stores
    the averaged weights as ``state_dict`` and the trained ones in ``ema_state_dict`` under
    ``module.`` (``steps`` stays in the EMA state)."""
    weights, ema_state = checkpoint['state_dict'], checkpoint['ema_state_dict']
    trained, averaged = dict(weights), dict(ema_state)
    for key in ema_state:
        if key.startswith('module.'):
            trained[key[7:]] = ema_state[key]
            averaged[key] = weights[key[7:]]
    return trained, averaged
