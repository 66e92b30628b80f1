"""Saves the random number generators' states in checkpoints and restores them on resume."""
import random

import numpy as np
import torch
from mmengine.hooks import Hook

from detr_plugin.registry import HOOKS

CHECKPOINT_KEY = 'rng_states'


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Makes ``--resume`` continue the random streams where the checkpointed run left them.

    mmengine re-seeds a resumed run from the configured seed, so the data augmentations that draw
    from the global generators (``RandomFlip`` uses ``np.random``) repeat the first epoch's draws
    instead of continuing; a resumed run then differs from an uninterrupted one even with
    ``randomness.deterministic=True``. The states of Python's ``random``, NumPy's and torch's
    generators (CUDA's too when present) are stored under ``checkpoint['rng_states']`` and set back
    after loading. Checkpoints written without this hook load unchanged.

    Only the saving process's states are stored (rank 0, and of CUDA only its own device's): every
    rank gets them on resume, into its own device, which matches mmengine's default of one seed for
    all ranks (``randomness.diff_rank_seed=False``); so a checkpoint written on N GPUs loads on any
    number of GPUs (or none). mmengine's resume loads a checkpoint onto the GPU
    (``map_location``), states included; they go back to the CPU before use, as torch requires.
    """

    priority = 'VERY_LOW'   # restore after every other hook has read the checkpoint

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        states = dict(python=random.getstate(), numpy=np.random.get_state(),
                      torch=torch.get_rng_state())
        if torch.cuda.is_available():
            states['cuda'] = torch.cuda.get_rng_state()  # the current device's
        checkpoint[CHECKPOINT_KEY] = states

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        states = checkpoint.get(CHECKPOINT_KEY)
        if states is None:
            return
        random.setstate(states['python'])
        np.random.set_state(states['numpy'])
        torch.set_rng_state(states['torch'].cpu())
        cuda = states.get('cuda')
        if isinstance(cuda, (list, tuple)):  # written by the first version: one per device
            cuda = cuda[0] if cuda else None
        if cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(cuda.cpu())
