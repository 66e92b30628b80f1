"""tools/analysis/count_ops.py: the ops of a two-layer model counted by hand, one D-FINE forward."""
import sys

import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.block = nn.Sequential(nn.ReLU())

    def forward(self, x):
        return self.block(self.proj(x)).view(8)


def test_counts_each_op_once_under_its_innermost_module(load_tool):
    tool = load_tool('tools/analysis/count_ops.py')
    model, x = Tiny(), torch.randn(4, 3)
    counter = tool.OpCounter(model, depth=1)
    with torch.no_grad():
        with counter:
            out = model(x)
        assert torch.equal(out, model(x))  # the hooks leave the outputs alone
    # F.linear on a matrix: the weight transposed (a view), then one addmm; a list index is
    # kept below the depth
    assert dict(counter.by_module) == {('proj', 't'): 1, ('proj', 'addmm'): 1,
                                       ('block.0', 'relu'): 1, ('(top)', 'view'): 1}
    assert tool.totals(counter.by_module) == {'proj': (2, 1), 'block.0': (1, 1), '(top)': (1, 0)}
    site, = {s for (s, op) in counter.by_site if op == 'view'}
    assert site.endswith('test_count_ops.py:15 forward')
    assert not model.proj._forward_pre_hooks and not model.proj._forward_hooks
    assert tool.OpCounter(model, depth=2).label('decoder.layers.0.attn.proj') == 'decoder.layers.0'


def test_dfine_forward_table(load_tool, repo_root, monkeypatch, capsys):
    tool = load_tool('tools/analysis/count_ops.py')
    monkeypatch.chdir(repo_root)
    monkeypatch.setattr(sys, 'argv', ['count_ops.py',
                                      'configs/dfine/dfine_hgnetv2-n_8xb16-160e_coco.py',
                                      '--size', '64', '--depth', '1', '--cfg-options',
                                      'model.decoder.num_queries=20'])
    tool.main()
    out = capsys.readouterr().out
    total, kernels = (int(w.strip('(')) for w in out.split()[:4:3])
    table = out.split('| module | ops | not views |\n|---|---|---|\n')[1].split('\n\n')[0]
    rows = {cells[0]: (int(cells[1]), int(cells[2]))
            for cells in ([c.strip() for c in line.strip('|').split('|')]
                          for line in table.splitlines())}
    assert {'backbone', 'neck', 'decoder', 'bbox_head', '(top)'} <= set(rows)
    assert (sum(n for n, _ in rows.values()), sum(k for _, k in rows.values())) == (total, kernels)
    # W(n) of the head is computed once per model, not at every forward (DFINEHead.bin_weights)
    assert 'pow ' not in out.split('ops (top')[1]
    assert 'detr_plugin/models/dense_heads/dfine_head.py' in out
