"""FlatCosineLR: the learning rate of every iteration as DEIM's training loop sets it, written
out here from DEIM's flat_cosine_schedule and train_one_epoch, also across a resume."""
import math

import pytest
import torch

from detr_plugin.engine.schedulers import FlatCosineLR
from detr_plugin.registry import PARAM_SCHEDULERS

EPOCH_LENGTH, EPOCHS = 7, 10
SCHEDULE = dict(warmup_iters=9, flat_end=4, final_steps=2, lr_gamma=0.5, start_factor=1 / 500)
BASE_LRS = (4e-4, 2e-5)  # two parameter groups: the backbone's own learning rate decays as well


def deim_learning_rates(base_lr):
    """The rate each iteration trains at in DEIM: the optimizer starts at its LinearWarmup's first
    value, and after iteration i the scheduler sets flat_cosine_schedule(i)."""
    total, warmup = EPOCHS * EPOCH_LENGTH, SCHEDULE['warmup_iters']
    flat, no_aug = 4 * EPOCH_LENGTH, 2 * EPOCH_LENGTH
    init_lr, min_lr = base_lr, base_lr * 0.5

    def schedule(i):
        if i <= warmup:
            return init_lr * (i / float(warmup)) ** 2
        elif warmup < i <= flat:
            return init_lr
        elif i >= total - no_aug:
            return min_lr
        return min_lr + (init_lr - min_lr) * 0.5 * (
            1 + math.cos(math.pi * (i - flat) / (total - flat - no_aug)))

    rates, lr = [], base_lr / 500
    for i in range(total):
        rates.append(lr)
        lr = schedule(i)
    return rates


def build(**overrides):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in BASE_LRS]
    optimizer = torch.optim.SGD([dict(params=[p], lr=lr) for p, lr in zip(params, BASE_LRS)])
    cfg = dict(type='FlatCosineLR', by_epoch=True, convert_to_iter_based=True, begin=0,
               end=EPOCHS, **{**SCHEDULE, **overrides})
    return optimizer, PARAM_SCHEDULERS.build(
        cfg, default_args=dict(optimizer=optimizer, epoch_length=EPOCH_LENGTH))


def run(optimizer, scheduler, iterations):
    rates = []
    for _ in range(iterations):
        rates.append([group['lr'] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return rates


def test_every_iteration_matches_deim():
    optimizer, scheduler = build()
    ours = run(optimizer, scheduler, EPOCHS * EPOCH_LENGTH)
    for group, base_lr in enumerate(BASE_LRS):
        expected = deim_learning_rates(base_lr)
        assert [r[group] for r in ours] == pytest.approx(expected, rel=1e-12, abs=0)
    # the phases, one iteration late as in DEIM: flat through iteration 4 * 7 + 1, the minimum
    # from iteration (10 - 2) * 7 + 1 on
    assert ours[11][0] == ours[29][0] == BASE_LRS[0] > ours[30][0]
    assert ours[-14][0] > ours[-13][0] == ours[-1][0] == BASE_LRS[0] * 0.5


@pytest.mark.parametrize('resume_at', [1, 9, 31, 60])  # in the warm-up, its end, cosine, final
def test_resume_continues_the_schedule(resume_at):
    optimizer, scheduler = build()
    before = run(optimizer, scheduler, resume_at)
    optim_state, sched_state = optimizer.state_dict(), scheduler.state_dict()
    # a new process: fresh optimizer and scheduler (at iteration 0), then the checkpoint's states
    optimizer, scheduler = build()
    optimizer.load_state_dict(optim_state)
    scheduler.load_state_dict(sched_state)
    after = run(optimizer, scheduler, EPOCHS * EPOCH_LENGTH - resume_at)
    expected = deim_learning_rates(BASE_LRS[0])
    assert [r[0] for r in before + after] == pytest.approx(expected, rel=1e-12, abs=0)


def test_no_warmup_and_no_decay():
    """DEIM-N's schedule: flat past the end (lr_gamma 1); warmup_iters=0 is no warm-up."""
    optimizer, scheduler = build(warmup_iters=0, flat_end=7800, lr_gamma=1.0, start_factor=1.0)
    assert {r[0] for r in run(optimizer, scheduler, EPOCHS * EPOCH_LENGTH)} == {BASE_LRS[0]}


def test_epoch_steps_are_refused():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match='convert_to_iter_based=True'):
        FlatCosineLR(optimizer, warmup_iters=1, flat_end=2, final_steps=1, end=5, by_epoch=True)
