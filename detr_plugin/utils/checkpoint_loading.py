import os


def allow_full_checkpoint_loading() -> None:
    """Lets ``torch.load`` read whole mmengine checkpoints in this process, as torch < 2.6 did.

    mmengine 0.10.7 calls ``torch.load`` without ``weights_only``, which torch >= 2.6 makes
    weights-only by default, and its checkpoints also hold the message hub (numpy arrays, bound
    methods) that this mode rejects. The tools call this for the checkpoints the user names
    (CHECKPOINT, --resume, load_from, --weights): load only checkpoints you trust.
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` in the environment keeps the strict mode.
    """
    if 'TORCH_FORCE_WEIGHTS_ONLY_LOAD' not in os.environ:
        os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
