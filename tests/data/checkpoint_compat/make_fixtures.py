"""Writes the checkpoint-compatibility fixtures: for small configs, the state-dict layout (names,
shapes, dtypes) of the model as built at the time of writing, and its eval outputs with weights
drawn from that layout alone (:func:`keyed_state_dict`) on a fixed input.

A later version of the code must load a state dict of that layout strictly and give the same
outputs (tests/test_models/test_checkpoint_compat.py): checkpoints converted or trained before a
refactoring keep working after it. Run from the repository root of the version to freeze:

    python tests/data/checkpoint_compat/make_fixtures.py OUT_DIR
"""
import sys
import zlib
from pathlib import Path

import torch

# (fixture name, config, cfg-options)
CASES = [
    ('rtdetr_demo', 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py', {}),
    ('deformable_detr_demo', 'configs/deformable_detr/deformable-detr_r18_1xb8-demo.py', {}),
    ('deformable_detr_refine_twostage_demo',
     'configs/deformable_detr/deformable-detr_r18_1xb8-demo.py',
     {'model.with_box_refine': True, 'model.as_two_stage': True}),
]


def keyed_state_dict(layout):
    """Weights drawn from a state-dict layout alone: each tensor from a generator seeded by its
    name, so that any model with this layout gets the same values. Running variances are
    positive, counters zero."""
    state = {}
    for name, shape, dtype in layout:
        if dtype == 'torch.int64':
            state[name] = torch.zeros(shape, dtype=torch.long)
            continue
        gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        value = torch.randn(shape, generator=gen) * 0.1
        state[name] = value.abs() + 0.5 if name.endswith('running_var') else value
    return state


def build(config, options):
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    import detr_plugin  # noqa: F401
    from detr_plugin.registry import MODELS
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(options)
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        return MODELS.build(cfg.model)


def fixed_input():
    return torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))


def main(out_dir):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, config, options in CASES:
        model = build(config, options)
        layout = [(k, list(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]
        model.load_state_dict(keyed_state_dict(layout))
        model.eval()
        with torch.no_grad():
            logits, boxes = model._forward(fixed_input())
        torch.save(dict(layout=layout, logits=logits, boxes=boxes), out_dir / f'{name}.pth')
        print(name, len(layout), 'tensors')


if __name__ == '__main__':
    main(sys.argv[1])
