"""Resuming after a crash gives the same model as an uninterrupted run (CPU, deterministic), with
the training loader's shipped worker settings (2 workers) and a validation after every epoch.

tools/analysis/resume_check.py trains the DETR demo config for 3 epochs (4 iterations each, a
checkpoint per epoch) uninterrupted (run A), and again (run B) killed with SIGKILL two iterations
into the epoch after its first checkpoint, then restarted with --resume. The final weights must be
bit-identical and every iteration's loss equal: the sampler order, the main process's generators
(RNGStateHook; without it RandomFlip's draws restart from the seed, and the validation between a
checkpoint and the next epoch moves them in run A only), the data workers' generators (seeded per
epoch; persistent workers, shipped before, kept theirs across epochs: 464 of 533 tensors differed)
and the optimizer state all carry over.
"""

DETR_DEMO = 'configs/detr/detr_r18_1xb8-demo.py'
EPOCHS, ITERS_PER_EPOCH = 3, 4


def test_resume_after_sigkill_mid_epoch_is_exact(tmp_path, demo_runs, load_tool, monkeypatch):
    data = tmp_path / 'data'
    demo_runs.make_tiny_dataset(data, num_train=2 * ITERS_PER_EPOCH)
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    # the tiny runs' options, but the config's own training-loader workers and validation
    options = [option for option in demo_runs.tiny_run_options(data, batch_size=2)
               if not option.startswith(('train_dataloader.num_workers',
                                         'train_dataloader.persistent_workers',
                                         'train_cfg.val_begin'))]
    options += ['train_dataloader.num_workers=2', 'train_cfg.val_interval=1']
    result = load_tool('tools/analysis/resume_check.py').check([
        DETR_DEMO, '--gpus', '0', '--deterministic', '--epochs', str(EPOCHS), '--kill-after', '2',
        '--work-dir', str(tmp_path / 'work'), '--cfg-options', *options])

    # killed in the middle of the epoch after the first checkpoint, and resumed from a checkpoint
    assert result['checkpoint_iter'] == ITERS_PER_EPOCH
    assert result['killed_after_iter'] % ITERS_PER_EPOCH != 0
    assert 1 <= result['resumed_epoch'] < EPOCHS
    assert result['resumed_iter'] == ITERS_PER_EPOCH * result['resumed_epoch']
    # the same model and the same loss at every iteration, redone iterations included
    assert result['iterations'] == EPOCHS * ITERS_PER_EPOCH
    assert result['loss_b'] == result['loss_a']
    assert result['redone_resumed'] == result['redone_killed']
    assert result['differing'] == [] and result['max_abs_diff'] == 0
