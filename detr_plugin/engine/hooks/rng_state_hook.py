"""Makes a resumed training run draw the same random numbers as an uninterrupted one."""
import random

import numpy as np
import torch
from mmengine.dataset import worker_init_fn as mmengine_worker_init_fn
from mmengine.dist import get_rank
from mmengine.hooks import Hook

from detr_plugin.registry import HOOKS

CHECKPOINT_KEY = 'rng_states'


def get_states() -> dict:
    """Python's, NumPy's and torch's generator states (CUDA's: the current device's)."""
    states = dict(python=random.getstate(), numpy=np.random.get_state(),
                  torch=torch.get_rng_state())
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state()
    return states


def set_states(states: dict) -> None:
    random.setstate(states['python'])
    np.random.set_state(states['numpy'])
    torch.set_rng_state(states['torch'].cpu())
    cuda = states.get('cuda')
    if isinstance(cuda, (list, tuple)):  # older checkpoints hold one state per device
        cuda = cuda[0] if cuda else None
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda.cpu())


class EpochSeededWorkers:
    """A DataLoader ``worker_init_fn``: seeds each data worker's Python, NumPy and torch
    generators from (seed, epoch, rank, worker id) alone.

    ``epoch`` is read when a worker starts; workers that start every epoch (``persistent_workers
    =False``) therefore draw new numbers each epoch, and the same numbers in a resumed run as in
    an uninterrupted one. (mmengine's default seeds them from (seed, rank, worker id): the same
    augmentation draws every epoch.)
    """

    def __init__(self, seed: int, rank: int) -> None:
        self.seed, self.rank, self.epoch = seed, rank, 0

    def __call__(self, worker_id: int) -> None:
        entropy = [self.seed % 2**32, self.epoch, self.rank, worker_id]
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])   # uint32
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Makes ``--resume`` continue the random streams where the checkpointed run left them.

    Three places draw random numbers during training, and each is made to repeat on resume:

    - The main process (augmentations of a loader without workers, ``BatchSyncRandomResize``,
      RT-DETR's denoising queries, each DataLoader iterator's base seed). mmengine re-seeds a
      resumed run from the configured seed, which would repeat the first epoch's draws; the
      states of Python's ``random``, NumPy's and torch's generators (CUDA's too when present)
      are stored under ``checkpoint['rng_states']`` and set back after loading. Checkpoints
      written without this hook load unchanged.
    - Validation inside training: it draws too (a DataLoader iterator takes a base seed from
      torch's generator), after the epoch's checkpoint is written and before the next epoch,
      which a resumed run does not repeat; the states are put back after each validation.
    - The data workers (the training augmentations): they are separate processes whose
      generators no checkpoint holds. The training loader's ``worker_init_fn`` (mmengine's, unless
      the config names another) becomes ``EpochSeededWorkers``, which seeds them from (seed,
      epoch, rank, worker id); so with workers that restart every epoch (``persistent_workers=
      False``, our base configs) the resumed epoch draws what the uninterrupted one drew.
      Persistent workers carry their generators from one epoch into the next and cannot be
      restored: a warning says so.

    Only the saving process's states are stored (rank 0, and of CUDA only its own device's): every
    rank gets them on resume, into its own device, which matches mmengine's default of one seed for
    all ranks (``randomness.diff_rank_seed=False``); so a checkpoint written on N GPUs loads on any
    number of GPUs (or none). mmengine's resume loads a checkpoint onto the GPU
    (``map_location``), states included; they go back to the CPU before use, as torch requires.
    """

    priority = 'VERY_LOW'   # restore after every other hook has read the checkpoint

    def __init__(self) -> None:
        self._workers = None
        self._before_val = None

    def before_train(self, runner) -> None:
        loader = runner.train_dataloader
        if loader.num_workers == 0:
            return
        if loader.persistent_workers:
            runner.logger.warning(
                'RNGStateHook: train_dataloader.persistent_workers=True keeps each worker\'s '
                'random generators running from one epoch into the next, where no checkpoint '
                'holds them: --resume will not repeat the augmentations of an uninterrupted run '
                '(set persistent_workers=False for that)')
        current = loader.worker_init_fn
        if current is not None and getattr(current, 'func', None) is not mmengine_worker_init_fn:
            runner.logger.warning('RNGStateHook: train_dataloader has its own worker_init_fn, '
                                  'left as it is: --resume repeats the workers\' draws only if it '
                                  'seeds them per epoch')
            return
        self._workers = EpochSeededWorkers(runner.seed, get_rank())
        loader.worker_init_fn = self._workers

    def before_train_epoch(self, runner) -> None:
        if self._workers is not None:
            self._workers.epoch = runner.epoch

    def before_val(self, runner) -> None:
        self._before_val = get_states()

    def after_val(self, runner) -> None:
        if self._before_val is not None:
            set_states(self._before_val)
            self._before_val = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = get_states()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        states = checkpoint.get(CHECKPOINT_KEY)
        if states is not None:
            set_states(states)
