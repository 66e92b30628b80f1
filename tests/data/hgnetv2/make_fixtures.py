"""Writes the HGNetv2 fixtures from the ORIGINAL code (Peterande/D-FINE, imported from ROOT at run
time), in the original's environment, from the repository root:

    /work/ref_env/bin/python tests/data/hgnetv2/make_fixtures.py /work/ref/D-FINE

* ``original_b0_use_lab_keys.json``: names and shapes of the state dict of the original
  ``HGNetv2('B0', use_lab=True, freeze_norm=False)`` (D-FINE S's backbone), in its order;
* ``original_b0_use_lab_outputs.pth``: that model's eval outputs, with the weights
  :func:`keyed_weights` draws from the names alone, on the input :func:`keyed_input`: stage 3
  whole, stages 0-2 as per-channel means (small enough to commit).
"""
import json
import os
import sys
import types
import zlib
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def keyed_weights(shapes):
    """Weights from names and shapes alone (each from a generator seeded by its name), scaled
    so that activations keep their size through the network: convolutions Kaiming-normal, norm
    weights and learnable scales near 1, biases and means near 0, variances near 1."""
    state = {}
    for name, shape in shapes.items():
        if name.endswith('num_batches_tracked'):
            state[name] = torch.zeros(shape, dtype=torch.long)
            continue
        gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        noise = torch.randn(shape, generator=gen)
        if len(shape) == 4:
            value = noise * (2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5
        elif name.endswith(('bn.weight', 'lab.scale')):
            value = 1 + 0.1 * noise
        elif name.endswith('running_var'):
            value = 1 + 0.2 * noise.abs()
        else:
            value = 0.1 * noise
        state[name] = value
    return state


def keyed_input():
    """(1, 3, 64, 64) in [0, 1)."""
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def import_original(root):
    sys.path.insert(0, root)
    for name in ('src', 'src.nn', 'src.nn.backbone'):  # skip the package __init__ files
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(root, *name.split('.'))]
        sys.modules[name] = module
    from src.nn.backbone.hgnetv2 import HGNetv2
    return HGNetv2


def main(root):
    model = import_original(root)('B0', use_lab=True, return_idx=[0, 1, 2, 3], freeze_at=-1,
                                  freeze_norm=False, pretrained=False)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    source = ('Peterande/D-FINE src/nn/backbone/hgnetv2.py: HGNetv2("B0", use_lab=True, '
              'freeze_at=-1, freeze_norm=False, pretrained=False).state_dict()')
    lines = [f'  {json.dumps(k)}: {json.dumps(s)}' for k, s in shapes.items()]
    with open(HERE / 'original_b0_use_lab_keys.json', 'w') as f:
        f.write(f'{{\n"source": {json.dumps(source)},\n"shapes": {{\n' + ',\n'.join(lines)
                + '\n}\n}\n')
    model.load_state_dict(keyed_weights(shapes))
    with torch.no_grad():
        outs = model.eval()(keyed_input())
    torch.save(dict(stage3=outs[3], channel_means=[o.mean((0, 2, 3)) for o in outs[:3]]),
               HERE / 'original_b0_use_lab_outputs.pth')
    print('stage output std', [round(o.std().item(), 3) for o in outs])


if __name__ == '__main__':
    main(os.path.abspath(sys.argv[1]))
