"""Checks the checkpoint a training run loads (``load_from``, ``--resume``) against the model."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from detr_plugin.registry import HOOKS
from detr_plugin.utils.checkpoint_loading import fit_to_model, weights_of


@HOOKS.register_module()
class CheckpointCheckHook(Hook):
    """The tools' checkpoint check (:func:`~detr_plugin.utils.checkpoint_loading.fit_to_model`)
    for the checkpoints mmengine's Runner loads itself.

    mmengine loads ``load_from`` and resumed checkpoints non-strictly: a checkpoint of another
    model or class count loads in part, with a multi-line warning at most. This hook sees the
    checkpoint before its weights reach the model (and EMAHook's copy). With ``partial=False``
    (resuming) a checkpoint that does not fit raises CheckpointError (one line); with
    ``partial=True`` (fine-tuning from ``load_from``) the keys that do not fit (the class heads
    of another class count) keep the model's fresh initialisation and one log line says which.
    An original authors' checkpoint (DETR, Deformable DETR, RT-DETR(v2), D-FINE, DEIM) is
    converted on the fly.
    """

    priority = 'VERY_HIGH'  # before EMAHook copies the weights into its averaged model

    def __init__(self, partial: bool = False) -> None:
        self.partial = partial

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        source = runner.cfg.get('load_from') or 'the latest checkpoint of the work dir'
        fitted = fit_to_model(model, weights_of(checkpoint, source), source, self.partial)
        checkpoint['state_dict'] = fitted.state_dict
        if fitted.skipped is not None:
            runner.logger.warning(f'fine-tuning: {fitted.skipped}')
