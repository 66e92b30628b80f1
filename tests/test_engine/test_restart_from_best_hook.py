"""RestartFromBestHook: at its epoch the model, the EMA and the optimizer are those of a best
checkpoint written the way mmengine's CheckpointHook and EMAHook write one; other epochs are left
alone; no best checkpoint is a warning; no save_best is an error."""
import logging
from types import SimpleNamespace

import pytest
import torch
from mmengine.hooks import CheckpointHook, EMAHook
from mmengine.logging import MessageHub
from mmengine.optim import OptimWrapper

from detr_plugin.engine.hooks import RestartFromBestHook


def make_runner(tmp_path, seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    optim_wrapper = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-3))
    ema = EMAHook(ema_type='ExpMomentumEMA', momentum=1e-4, gamma=1000, update_buffers=True)
    runner = SimpleNamespace(model=model, optim_wrapper=optim_wrapper, epoch=0,
                             logger=logging.getLogger('test'), work_dir=str(tmp_path),
                             hooks=[ema, CheckpointHook(save_best='coco/bbox_mAP')],
                             message_hub=MessageHub.get_instance(f'restart_{seed}'))
    ema.before_run(runner)
    return runner, ema


def train_steps(runner, ema, steps):
    for _ in range(steps):
        loss = runner.model(torch.randn(4, 3)).square().sum()
        runner.optim_wrapper.update_params(loss)
        ema.ema_model.update_parameters(runner.model)


def save_best(runner, ema, work_dir, epoch):
    """The checkpoints mmengine writes after ``epoch`` epochs when its validation is the best:
    epoch_{epoch}.pth with the optimizer, the best one without; EMAHook swaps in its averages."""
    for name, optimizer in ((f'epoch_{epoch}.pth', True),
                            (f'best_coco_bbox_mAP_epoch_{epoch}.pth', False)):
        checkpoint = dict(meta=dict(epoch=epoch), state_dict=runner.model.state_dict())
        if optimizer:
            checkpoint['optimizer'] = runner.optim_wrapper.state_dict()
        ema.before_save_checkpoint(runner, checkpoint)
        torch.save(checkpoint, work_dir / name)
    runner.message_hub.update_info('best_ckpt', str(work_dir / name))


def snapshot(runner, ema):
    return ({k: v.clone() for k, v in runner.model.state_dict().items()},
            {k: v.clone() for k, v in ema.ema_model.state_dict().items()},
            [s['exp_avg'].clone() for s in runner.optim_wrapper.optimizer.state.values()])


def assert_same(a, b):
    for x, y in zip(a[:2], b[:2]):
        assert x.keys() == y.keys()
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0, msg=key)
    for x, y in zip(a[2], b[2]):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_restart_restores_model_ema_and_optimizer(tmp_path):
    runner, ema = make_runner(tmp_path, 0)
    train_steps(runner, ema, 3)
    best = snapshot(runner, ema)
    save_best(runner, ema, tmp_path, epoch=3)
    train_steps(runner, ema, 4)  # later, worse epochs
    hook = RestartFromBestHook(epoch=5)
    hook.before_train(runner)
    runner.epoch = 4
    hook.before_train_epoch(runner)
    with pytest.raises(AssertionError):
        assert_same(snapshot(runner, ema), best)  # nothing yet
    runner.epoch = 5
    hook.before_train_epoch(runner)
    assert_same(snapshot(runner, ema), best)
    assert int(ema.ema_model.steps) == 3
    assert not torch.equal(best[0]['0.weight'], best[1]['module.0.weight'])  # EMA is not model


def test_without_the_epoch_checkpoint_the_optimizer_goes_on(tmp_path, caplog):
    runner, ema = make_runner(tmp_path, 3)
    train_steps(runner, ema, 2)
    best = snapshot(runner, ema)
    save_best(runner, ema, tmp_path, epoch=2)
    (tmp_path / 'epoch_2.pth').unlink()  # max_keep_ckpts removed it
    train_steps(runner, ema, 2)
    optimizer_now = snapshot(runner, ema)[2]
    hook = RestartFromBestHook(epoch=4)
    hook.before_train(runner)
    runner.epoch = 4
    with caplog.at_level(logging.WARNING, logger='test'):
        hook.before_train_epoch(runner)
    assert 'the optimizer state goes on' in caplog.text
    restored = snapshot(runner, ema)
    assert_same(restored, best[:2] + (optimizer_now,))


def test_without_a_best_checkpoint_training_goes_on(tmp_path, caplog):
    runner, ema = make_runner(tmp_path, 1)
    before = snapshot(runner, ema)
    runner.epoch = 2
    with caplog.at_level(logging.WARNING, logger='test'):
        RestartFromBestHook(epoch=2).before_train_epoch(runner)
    assert 'no best checkpoint before epoch 2' in caplog.text
    assert_same(snapshot(runner, ema), before)


def test_needs_save_best(tmp_path):
    runner, _ = make_runner(tmp_path, 2)
    runner.hooks[1] = CheckpointHook()
    with pytest.raises(ValueError, match='default_hooks.checkpoint.save_best'):
        RestartFromBestHook(epoch=2).before_train(runner)
