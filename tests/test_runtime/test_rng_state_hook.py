"""RNGStateHook: the draws after restoring a checkpoint repeat the draws made after saving it."""
import io
import random

import numpy as np
import pytest
import torch

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
