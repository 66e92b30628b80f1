"""RNGStateHook: the draws after restoring a checkpoint repeat the draws made after saving it."""
import io
import random
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.dataset import worker_init_fn as mmengine_worker_init_fn

from detr_plugin.engine.hooks import RNGStateHook


def draw_all():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_restored_generators_repeat_the_draws_after_the_save():
    hook = RNGStateHook()
    checkpoint = {}
    draw_all()
    hook.before_save_checkpoint(None, checkpoint)
    after_save = draw_all()
    draw_all()   # the generators move on, as the crashed run's did
    hook.after_load_checkpoint(None, checkpoint)
    assert draw_all() == after_save


def test_checkpoint_without_states_leaves_generators_alone():
    np.random.seed(3)
    expected = np.random.rand(2).tolist()
    np.random.seed(3)
    RNGStateHook().after_load_checkpoint(None, {'state_dict': {}})
    assert np.random.rand(2).tolist() == expected


def test_cuda_state_of_an_n_gpu_checkpoint_loads_on_any_device_count(monkeypatch):
    """A checkpoint of a 2-GPU run (first format: one state per device) evaluated on 1 GPU crashed
    in torch.cuda.set_rng_state_all; now the saving device's state goes into the current device."""
    restored = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'set_rng_state', lambda state: restored.append(state))
    monkeypatch.setattr(torch.cuda, 'set_rng_state_all',
                        lambda states: (_ for _ in ()).throw(AssertionError('per-device restore')))
    base = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    device0, device1 = torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)
    RNGStateHook().after_load_checkpoint(None, {'rng_states': dict(base, cuda=[device0, device1])})
    RNGStateHook().after_load_checkpoint(None, {'rng_states': dict(base, cuda=device1)})
    assert [s.item() for s in restored] == [1, 2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_states_loaded_onto_the_gpu_are_restored():
    """mmengine's resume loads checkpoints with map_location=<the GPU>, which moves the saved
    states there; torch.set_rng_state takes CPU tensors only (a 2-GPU resume crashed on it)."""
    hook = RNGStateHook()
    checkpoint = {}
    hook.before_save_checkpoint(None, checkpoint)
    after_save = draw_all(), torch.rand(3, device='cuda').tolist()
    draw_all(), torch.rand(3, device='cuda')
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, map_location='cuda', weights_only=False)
    assert loaded['rng_states']['torch'].is_cuda   # what resume hands the hook
    hook.after_load_checkpoint(None, loaded)
    assert (draw_all(), torch.rand(3, device='cuda').tolist()) == after_save


class DrawDataset(torch.utils.data.Dataset):
    """Each item: what the worker's three generators draw next (an augmentation stand-in)."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return random.random(), float(np.random.rand()), float(torch.rand(()))


def epoch_draws(loader, epoch, hook, runner):
    runner.epoch = epoch
    hook.before_train_epoch(runner)
    return [item for batch in loader for item in zip(*[t.tolist() for t in batch])]


def worker_runner(persistent=False, worker_init_fn=None):
    """A runner stand-in whose loader is built as mmengine's Runner builds one (with mmengine's
    worker_init_fn unless another is given)."""
    worker_init_fn = worker_init_fn or partial(mmengine_worker_init_fn, num_workers=2, rank=0,
                                               seed=7)
    loader = torch.utils.data.DataLoader(DrawDataset(), batch_size=2, num_workers=2,
                                         persistent_workers=persistent,
                                         worker_init_fn=worker_init_fn)
    warnings = []
    logger = type('Logger', (), {'warning': lambda self, m: warnings.append(m)})()
    return SimpleNamespace(train_dataloader=loader, seed=7, epoch=0, logger=logger), warnings


def test_workers_draw_per_epoch_numbers_that_a_resumed_run_repeats():
    """Uninterrupted: epochs 0, 1, 2 with one set of workers per epoch. Resumed: a new loader and
    hook start at epoch 2. mmengine's own worker seeding repeats epoch 0's draws every epoch."""
    hook, (runner, warnings) = RNGStateHook(), worker_runner()
    hook.before_train(runner)
    uninterrupted = [epoch_draws(runner.train_dataloader, e, hook, runner) for e in range(3)]
    assert uninterrupted[0] != uninterrupted[1] != uninterrupted[2]
    assert len(set(uninterrupted[0])) == 4   # each worker and item draws its own numbers
    assert warnings == []

    resumed_hook, (resumed, _) = RNGStateHook(), worker_runner()
    resumed_hook.before_train(resumed)
    assert epoch_draws(resumed.train_dataloader, 2, resumed_hook, resumed) == uninterrupted[2]

    mmengine_seeded, _ = worker_runner()   # without the hook
    draws = [[item for batch in mmengine_seeded.train_dataloader
              for item in zip(*[t.tolist() for t in batch])] for _ in range(2)]
    assert draws[0] == draws[1]


def test_persistent_workers_are_reported():
    hook, (runner, warnings) = RNGStateHook(), worker_runner(persistent=True)
    hook.before_train(runner)
    assert len(warnings) == 1 and 'persistent_workers=True' in warnings[0]


def test_a_configured_worker_init_fn_is_kept():
    def own_init(worker_id):
        np.random.seed(worker_id)

    hook, (runner, warnings) = RNGStateHook(), worker_runner(worker_init_fn=own_init)
    hook.before_train(runner)
    assert runner.train_dataloader.worker_init_fn is own_init
    assert len(warnings) == 1 and 'its own worker_init_fn' in warnings[0]


def test_validation_leaves_the_training_streams_where_they_were():
    """A resumed run starts its next epoch without the validation that followed the checkpoint in
    the uninterrupted run, so validation must not move the generators."""
    hook = RNGStateHook()
    state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    without_validation = draw_all()
    random.setstate(state[0]), np.random.set_state(state[1]), torch.set_rng_state(state[2])
    hook.before_val(None)
    draw_all()   # what validation draws (a DataLoader iterator's base seed, say)
    hook.after_val(None)
    assert draw_all() == without_validation
