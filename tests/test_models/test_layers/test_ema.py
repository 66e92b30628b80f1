"""ForeachExpMomentumEMA against mmdet's ExpMomentumEMA (the per-tensor original): the same
averages step after step, the same state-dict layout, checkpoints exchangeable."""
import pytest
import torch
from mmdet.models.layers import ExpMomentumEMA
from torch import nn

from detr_plugin.models.layers import ForeachExpMomentumEMA


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def train_a_little(model, step):
    """Moves the parameters and the BatchNorm statistics, differently at every step."""
    g = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    model.train()
    model(torch.randn(2, 3, 6, 6, generator=g))


@pytest.mark.parametrize('update_buffers, interval', [(True, 1), (False, 1), (True, 2)])
def test_same_averages_as_mmdet(update_buffers, interval):
    model = small_model()
    kwargs = dict(momentum=0.01, gamma=3, interval=interval, update_buffers=update_buffers)
    ours, theirs = ForeachExpMomentumEMA(model, **kwargs), ExpMomentumEMA(model, **kwargs)
    for step in range(6):
        train_a_little(model, step)
        ours.update_parameters(model)
        theirs.update_parameters(model)
        for (key, a), (key_ref, b) in zip(ours.state_dict().items(),
                                          theirs.state_dict().items()):
            assert key == key_ref
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=f'{key}, step {step}')
    assert int(ours.steps) == 6
    # the average is not the model: momentum 0.01 with gamma 3 has decayed by step 5
    assert not torch.allclose(ours.module[0].weight, model[0].weight)


def test_checkpoints_are_exchangeable_with_mmdet():
    model = small_model()
    theirs = ExpMomentumEMA(model, momentum=0.01, gamma=3, update_buffers=True)
    for step in range(3):
        train_a_little(model, step)
        theirs.update_parameters(model)
    ours = ForeachExpMomentumEMA(small_model(), momentum=0.01, gamma=3, update_buffers=True)
    ours.load_state_dict(theirs.state_dict())
    train_a_little(model, 3)
    ours.update_parameters(model)
    theirs.update_parameters(model)
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
