"""Resuming after a crash gives the same model as an uninterrupted run (CPU, deterministic).

tools/analysis/resume_check.py trains the DETR demo config for 3 epochs (4 iterations each, a
checkpoint per epoch) uninterrupted (run A), and again (run B) killed with SIGKILL two iterations
into the epoch after its first checkpoint, then restarted with --resume. The final weights must be
bit-identical and every iteration's loss equal: the sampler order, the augmentation RNG
(RNGStateHook in the default runtime; without it RandomFlip's draws restart from the seed) and the
optimizer state all carry over.
"""

DETR_DEMO = 'configs/detr/detr_r18_1xb8-demo.py'
EPOCHS, ITERS_PER_EPOCH = 3, 4


def test_resume_after_sigkill_mid_epoch_is_exact(tmp_path, demo_runs, load_tool, monkeypatch):
    data = tmp_path / 'data'
    demo_runs.make_tiny_dataset(data, num_train=2 * ITERS_PER_EPOCH)
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    result = load_tool('tools/analysis/resume_check.py').check([
        DETR_DEMO, '--gpus', '0', '--deterministic', '--epochs', str(EPOCHS), '--kill-after', '2',
        '--work-dir', str(tmp_path / 'work'),
        '--cfg-options', *demo_runs.tiny_run_options(data, batch_size=2)])

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
