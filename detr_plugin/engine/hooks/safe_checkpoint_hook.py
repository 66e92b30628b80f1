"""A CheckpointHook that deletes outdated checkpoints only once the new one is written."""
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook

from detr_plugin.registry import HOOKS


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's CheckpointHook, crash-safe with ``max_keep_ckpts``.

    mmengine 0.10.7 deletes the oldest kept checkpoint *before* writing the new one (so that the
    saved ``keep_ckpt_ids`` already list it). With ``max_keep_ckpts=1`` a crash while saving then
    leaves no complete checkpoint, and ``last_checkpoint`` names a deleted file. Here the same
    bookkeeping is done first, the parent saves with its own deletion turned off (it writes the
    checkpoint, then ``last_checkpoint``), and only then are the outdated files removed.
    """

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        outdated = self._track_kept_step(runner, step)
        max_keep_ckpts, self.max_keep_ckpts = self.max_keep_ckpts, -1
        try:
            super()._save_checkpoint_with_step(runner, step, meta)
        finally:
            self.max_keep_ckpts = max_keep_ckpts
        if is_main_process():
            for old_step in outdated:
                self._remove_checkpoint(old_step)

    def _track_kept_step(self, runner, step: int) -> list:
        """Adds ``step`` to the kept checkpoints; returns the steps that fall out of the window."""
        if self.max_keep_ckpts <= 0 or (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            return []   # unlimited, or this step is already saved (the best-checkpoint path)
        outdated = []
        while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
            outdated.append(self.keep_ckpt_ids.popleft())
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        return outdated

    def _remove_checkpoint(self, step: int) -> None:
        path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(step))
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):   # DeepSpeed writes a checkpoint as a directory
            self.file_backend.rmtree(path)
