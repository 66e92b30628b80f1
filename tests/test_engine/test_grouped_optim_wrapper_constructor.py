"""GroupedOptimWrapperConstructor: a few parameter groups instead of one per tensor, and the very
same update as mmengine's default constructor (compared step by step)."""
import copy
import pathlib

import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from detr_plugin.registry import MODELS

ROOT = pathlib.Path(__file__).resolve().parents[2]


def model_and_optim_cfg():
    cfg = Config.fromfile(str(ROOT / 'configs/rtdetr/rtdetr_r50vd_8xb2-72e_coco.py'))
    demo = Config.fromfile(str(ROOT / 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py')).model
    torch.manual_seed(0)
    model = MODELS.build(demo)
    model.backbone.stem[0].weight.requires_grad_(False)  # a frozen tensor too
    return model, cfg.optim_wrapper


def options_of_each_tensor(optimizer):
    return {id(p): {k: v for k, v in g.items() if k != 'params'}
            for g in optimizer.param_groups for p in g['params']}


def test_groups_are_few_and_options_per_tensor_unchanged():
    model, optim_cfg = model_and_optim_cfg()
    assert optim_cfg.constructor == 'GroupedOptimWrapperConstructor'
    grouped = build_optim_wrapper(model, optim_cfg).optimizer
    default = build_optim_wrapper(
        model, dict(optim_cfg, constructor='DefaultOptimWrapperConstructor')).optimizer
    assert len(default.param_groups) > 300  # one per tensor
    # backbone / rest x decayed / not decayed, and the frozen tensor's group
    assert len(grouped.param_groups) <= 5
    assert options_of_each_tensor(grouped) == options_of_each_tensor(default)
    lrs = {g['lr'] for g in grouped.param_groups}
    assert lrs == {1e-4, 1e-5}


def test_same_update_as_the_default_constructor():
    model, optim_cfg = model_and_optim_cfg()
    twin = copy.deepcopy(model)
    grouped = build_optim_wrapper(model, optim_cfg)
    default = build_optim_wrapper(twin, dict(optim_cfg, constructor='DefaultOptimWrapperConstructor'))
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):
        for p, q in zip(model.parameters(), twin.parameters()):
            if p.requires_grad:
                p.grad = torch.randn(p.shape, generator=generator)
                q.grad = p.grad.clone()
        grouped.step()   # AdamW with the config's gradient clipping
        default.step()
    # equal up to the order in which the clipping sums the gradient norm (an update is ~1e-4)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8, msg=name)
