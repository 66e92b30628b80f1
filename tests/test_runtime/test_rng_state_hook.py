"""RNGStateHook: the draws after restoring a checkpoint repeat the draws made after saving it."""
import random

import numpy as np
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
