"""Checkpoints made before a refactoring still load and give the same outputs.

The fixtures (tests/data/checkpoint_compat/*.pth) were written by make_fixtures.py with the code
of commit dbbcff5, before the heads took over per-layer prediction: each holds the state-dict
layout of a small model and its eval outputs with weights drawn from that layout alone. Today's
model must accept that layout strictly and reproduce the outputs. The RT-DETR one was written with
dbbcff5 plus the one deliberate numerical change since (814951e: the hybrid encoder's sin-cos
frequencies rounded as the original's; with random weights it moves the outputs by up to 0.12).
"""
import pathlib

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / 'tests' / 'data' / 'checkpoint_compat'


@pytest.fixture(scope='module')
def fixtures(load_tool):
    return load_tool('tests/data/checkpoint_compat/make_fixtures.py')


@pytest.mark.parametrize('case', ['rtdetr_demo', 'deformable_detr_demo',
                                  'deformable_detr_refine_twostage_demo'])
def test_old_checkpoint_loads_and_gives_the_same_outputs(fixtures, case):
    (_, config, options), = [c for c in fixtures.CASES if c[0] == case]
    saved = torch.load(FIXTURES / f'{case}.pth', weights_only=True)
    model = fixtures.build(str(ROOT / config), options)
    model.load_state_dict(fixtures.keyed_state_dict(saved['layout']), strict=True)
    model.eval()
    with torch.no_grad():
        logits, boxes = model._forward(fixtures.fixed_input())
    torch.testing.assert_close(logits, saved['logits'], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(boxes, saved['boxes'], atol=1e-5, rtol=1e-5)
