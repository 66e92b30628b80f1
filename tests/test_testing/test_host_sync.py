"""HostSyncRecorder on hand-written cases: each known waiting op at its line, nothing else."""
import inspect

import numpy as np
import torch
from torch import nn

from detr_plugin.testing import HostSyncRecorder, SyncSite


def lines_of(fn, *markers):
    """Line number of each marker comment inside ``fn``'s source."""
    source, start = inspect.getsourcelines(fn)
    return [start + next(i for i, line in enumerate(source) if f'# {m}' in line)
            for m in markers]


def three_waits(model: nn.Module, x: torch.Tensor):
    y = model(x.to(model.weight.device, non_blocking=True))  # non-blocking copy: no wait
    host = torch.tensor([1.0, 2.0])                         # host data: reads are free
    _ = float(host.sum()), host.tolist(), int(host.argmax())
    positive = int((y > 0).sum())                           # wait-1
    selected = y[y > 0]                                     # wait-2
    on_device = torch.zeros(3, device=y.device)             # a fill kernel: no copy
    on_device[on_device > 0] = 0.0                          # masked_fill with a host value
    labels = torch.where(y > 0, y, 0.0).argmax(-1)          # fixed shape: no wait
    return positive, selected, labels.cpu(), on_device      # wait-3


def test_three_known_waits_are_the_only_ones():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    with HostSyncRecorder(model) as rec:
        three_waits(model, torch.randn(5, 4))
    lines = lines_of(three_waits, 'wait-1', 'wait-2', 'wait-3')
    kinds = sorted((kind, int(stack.split(' ')[0].split(':')[1])) for kind, stack in rec.stacks)
    assert kinds == sorted([('item', lines[0]), ('bool index', lines[1]),
                            ('copy to host', lines[2])])
    assert rec.total == 3
    assert all(site.function.endswith('test_host_sync.py:three_waits') for site in rec.sites)


def test_copies_and_data_dependent_ops():
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    with HostSyncRecorder(model) as rec:
        y = model(torch.randn(3, 2))
        indices = torch.from_numpy(np.arange(3)).to(y.device)   # blocking host-to-device copy
        y.new_tensor([2.0, 3.0])                                 # host data onto the device
        torch.nonzero(y)
        y.unique()
        y.flatten().repeat_interleave(indices.repeat(2))         # output size read on the host
        y.flatten().repeat_interleave(indices.repeat(2), output_size=6)  # given: no wait
        y.detach().numpy()
        buffer = torch.empty(3, 2)
        buffer.copy_(y.detach(), non_blocking=True)              # waited on where it is read
        y.masked_fill(y > 0, y.sum())                            # a device value read on the host
    expected = {'copy to device': 2, 'nonzero': 1, 'unique': 1, 'repeat_interleave': 1,
                'copy to host': 1, 'async copy to host': 1, 'item': 1}
    assert {kind: sum(n for s, n in rec.sites.items() if s.kind == kind)
            for kind in expected} == expected
    assert rec.total == sum(expected.values())


def test_host_only_work_and_backward_are_free_of_waits():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    with HostSyncRecorder(model) as rec:
        sizes = torch.tensor([[4, 5], [6, 7]])
        _ = sizes.prod(1).tolist(), sizes[sizes > 4], sizes.unique()  # host metadata
        loss = model(torch.ones(2, 3, device=model.weight.device)).square().sum()
        loss.backward()
    assert rec.total == 0, rec.report()


def test_sites_group_by_function():
    model = nn.Linear(1, 1)

    def read_twice(t):
        return t.sum().item() + t.mean().item()

    with HostSyncRecorder(model) as rec:
        read_twice(model.weight)
        read_twice(model.bias)
    assert rec.sites == {SyncSite('item', 'tests/test_testing/test_host_sync.py:read_twice'): 4}
    assert len(rec.stacks) == 2  # the report keeps the two callers apart


def index_copies(model: nn.Module, x: torch.Tensor):
    y = model(x)
    index = torch.arange(2, device=y.device)
    flags = torch.zeros(5, dtype=torch.bool, device=y.device)
    _ = y[:, index], y[..., [1, 0]]                   # copy-1: the list becomes a host index
    _ = y[torch.tensor([0, 2])]                       # copy-2: a host index tensor
    flags[index] = True                               # copy-3: the host value True
    flags.index_fill_(0, index, True)                 # a scalar argument: no copy
    flags[flags] = False                              # masked_fill with a host value
    y[index] = y[index] * 2                           # device index and values: no copy
    return flags


def test_indexing_with_host_indices_or_values_copies_them_to_the_device():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    with HostSyncRecorder(model) as rec:
        index_copies(model, torch.randn(4, 2))
    lines = lines_of(index_copies, 'copy-1', 'copy-2', 'copy-3')
    kinds = sorted((kind, int(stack.split(' ')[0].split(':')[1])) for kind, stack in rec.stacks)
    assert kinds == [('copy to device', line) for line in lines], rec.report()
    assert rec.total == 3
