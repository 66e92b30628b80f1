"""TrainingGraphs: the backbone / encoder of a training step replayed as CUDA graphs must give the
eager outputs, parameter gradients (None for an unused parameter) and BatchNorm statistics, at
every shape of a multi-scale schedule, in fp32 and under bf16 autocast."""
import copy

import pytest
import torch
from torch import nn

from detr_plugin.models.layers.training_graphs import Spec, TrainingGraphs


class Stem(nn.Module):
    """conv-BN-ReLU, a strided conv; one parameter the outputs never use."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.unused = nn.Parameter(torch.ones(5))

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Levels(nn.Module):
    """Two levels from the stem's map (a tuple, as a hybrid encoder returns)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.proj = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.proj(x), self.down(x)


def test_eager_off_cuda_and_in_eval():
    """On the CPU, in eval mode and without gradients the modules run as they are."""
    torch.manual_seed(0)
    modules = [Stem(), Levels()]
    graphs = TrainingGraphs()
    x = torch.randn(2, 3, 8, 8)
    expected = modules[1](modules[0](x))
    for out, ref in zip(graphs(modules, x), expected):
        assert torch.equal(out, ref)
    assert graphs.captures == {} and graphs.pool is None
    assert copy.deepcopy(graphs).captures == {}


def test_views_of_mixed_dtypes_follow_the_spec_order():
    graphs = TrainingGraphs()
    spec = Spec((torch.Size([2, 3]), torch.Size([4]), torch.Size([5])),
                (torch.float32, torch.bfloat16, torch.float32))
    graphs.reserve('outputs', spec, torch.device('cpu'))
    views = graphs.views('outputs', spec)
    assert [tuple(v.shape) for v in views] == [(2, 3), (4,), (5,)]
    assert [v.dtype for v in views] == list(spec.dtypes)
    flat = graphs.buffers['outputs', torch.float32].flat
    assert views[0].data_ptr() == flat.data_ptr()  # float32 tensors packed in order
    assert views[2].data_ptr() == flat.data_ptr() + 6 * 4
    graphs.captures['stale'], graphs.pool = None, (0, 1)
    graphs.reserve('outputs', Spec((torch.Size([20]),), (torch.float32,)), torch.device('cpu'))
    # a grown buffer invalidates the graphs that read the old one; their pool goes with them
    assert graphs.captures == {} and graphs.pool is None


def step(modules, graphs, x, dtype):
    for m in modules:
        for p in m.parameters():
            p.grad = None
    with torch.autocast('cuda', dtype=dtype or torch.float32, enabled=dtype is not None):
        outs = graphs(modules, x) if graphs is not None else modules[1](modules[0](x))
        loss = sum((o.float() * torch.linspace(-1, 1, o.numel(), device=o.device)
                    .view_as(o)).square().mean() for o in outs)
    loss.backward()
    return loss.detach(), outs


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [None, torch.bfloat16])
def test_replays_match_eager_over_a_multi_scale_schedule(dtype):
    torch.manual_seed(0)
    eager = [Stem().cuda(), Levels().cuda()]
    graphed = copy.deepcopy(eager)
    graphs = TrainingGraphs()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype is None else dict(rtol=2e-2, atol=2e-3)
    for side in (16, 24, 16, 32, 24):
        x = torch.randn(4, 3, side, side, device='cuda')
        ref_loss, ref_outs = step(eager, None, x, dtype)
        loss, outs = step(graphed, graphs, x, dtype)
        torch.testing.assert_close(loss, ref_loss, **tol)
        for out, ref in zip(outs, ref_outs):
            torch.testing.assert_close(out, ref, **tol)
        for (name, p), q in zip([(n, p) for m in graphed for n, p in m.named_parameters()],
                                [p for m in eager for p in m.parameters()]):
            if q.grad is None:
                assert p.grad is None, name
            else:
                torch.testing.assert_close(p.grad, q.grad, **tol, msg=name)
        torch.testing.assert_close(graphed[0].bn.running_mean, eager[0].bn.running_mean, **tol)
        torch.testing.assert_close(graphed[0].bn.running_var, eager[0].bn.running_var, **tol)
        assert graphed[0].bn.num_batches_tracked == eager[0].bn.num_batches_tracked
    # 32 outgrew the buffers of 16 and 24 (dropped), then 24 was captured again
    assert sorted(key[0][-1] for key in graphs.captures) == [24, 32]


@pytest.mark.gpu
def test_gradients_are_fresh_tensors_each_step():
    """Accumulating over two backward passes (gradient accumulation) sums both steps."""
    torch.manual_seed(0)
    eager = [Stem().cuda(), Levels().cuda()]
    graphed = copy.deepcopy(eager)
    graphs = TrainingGraphs()
    xs = [torch.randn(2, 3, 16, 16, device='cuda') for _ in range(2)]
    for modules, g in ((eager, None), (graphed, graphs)):
        for x in xs:  # no zeroing between the two: .grad accumulates
            with torch.autocast('cuda', enabled=False):
                outs = g(modules, x) if g is not None else modules[1](modules[0](x))
            sum(o.square().mean() for o in outs).backward()
    torch.testing.assert_close(graphed[0].conv.weight.grad, eager[0].conv.weight.grad,
                               rtol=1e-5, atol=1e-6)
