"""The EMA of the D-FINE and DEIM recipes: ForeachExpMomentumEMA with momentum 1e-4 and gamma
1000 (EMAHook) against their ModelEMA written out here: the EMA starts as a copy of the model,
and update k (from 1) averages every floating-point state entry with decay
0.9999 * (1 - exp(-k / 1000))."""
import copy
import math

import torch
from torch import nn

from detr_plugin.models.layers import ForeachExpMomentumEMA


def step(model, k):
    g = torch.Generator().manual_seed(k)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    model.train()
    model(torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64))  # moves BatchNorm statistics


def test_same_averages_as_deim_model_ema():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)).double()
    deim = copy.deepcopy(model.state_dict())  # ModelEMA: a copy of the model at construction
    ours = ForeachExpMomentumEMA(model, momentum=1e-4, gamma=1000, update_buffers=True)
    for k in range(1, 6):
        step(model, k)
        decay = 0.9999 * (1 - math.exp(-k / 1000))
        for key, value in deim.items():
            if value.dtype.is_floating_point:
                deim[key] = decay * value + (1 - decay) * model.state_dict()[key]
        ours.update_parameters(model)
    # ours copies the model at the first update where DEIM keeps 1e-3 of the initial weights;
    # the decays of updates 2-5 (k / 1000 or less) scale that to below 1e-13
    for key, value in ours.module.state_dict().items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, deim[key], rtol=0, atol=1e-12, msg=key)
    assert not torch.allclose(ours.module[0].weight, model[0].weight)
