"""HGNetv2 parity: the original (Peterande/D-FINE) and detr_plugin's, same weights and input.

    .venv/bin/python tools/model_converters/hgnetv2_parity_check.py --root /work/ref/D-FINE \
        --ref-python /work/ref_env/bin/python [--work-dir DIR] [--only B0 B4] [--tol 1e-5]

For each backbone the D-FINE / DEIM configs use (B0 and B2 with learnable affines and
BatchNorm, as the N/S/M models; B4 and B5 with frozen BatchNorm, as L and X),
hgnetv2_parity_reference.py runs the original under --ref-python (its environment) and saves
seeded random weights, an input and every stage's output (``<work-dir>/hgnetv2_<arch>.pth``,
reused unless --regenerate). Here the weights go through ``hgnetv2://<file>`` (the converter a
config uses), load strictly into ``HGNetv2`` and the four stages' outputs are compared, in eval
and in training mode. Prints the largest absolute difference per stage; exits 1 above --tol.
"""
import argparse
import os
import subprocess
import sys
from typing import Dict, List, NamedTuple

import torch
from mmengine.runner import CheckpointLoader

from detr_plugin.registry import MODELS
from detr_plugin.utils import register_all_modules

TOOLS = os.path.dirname(os.path.abspath(__file__))


class Variant(NamedTuple):
    arch: str
    use_lab: bool
    freeze_norm: bool
    models: str  # which D-FINE / DEIM models use it


VARIANTS = (Variant('B0', True, False, 'N, S'), Variant('B2', True, False, 'M'),
            Variant('B4', False, True, 'L'), Variant('B5', False, True, 'X'))


def make_reference(variant: Variant, args, path: str) -> None:
    cmd = [args.ref_python, os.path.join(TOOLS, 'hgnetv2_parity_reference.py'),
           '--root', args.root, '--arch', variant.arch, '--out', path]
    cmd += ['--use-lab'] * variant.use_lab + ['--freeze-norm'] * variant.freeze_norm
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}  # the original's own
    subprocess.run(cmd, check=True, env=env)


@torch.no_grad()
def compare(path: str) -> Dict[str, float]:
    """'eval/stage{i}' and 'train/stage{i}' -> max abs difference to the original's output."""
    reference = torch.load(path, map_location='cpu', weights_only=True)
    meta = reference['meta']
    norm = 'FrozenBatchNorm2d' if meta['freeze_norm'] else 'BN'
    model = MODELS.build(dict(type='HGNetv2', arch=meta['arch'], out_indices=(0, 1, 2, 3),
                              use_lab=meta['use_lab'], norm_cfg=dict(type=norm)))
    model.load_state_dict(CheckpointLoader.load_checkpoint('hgnetv2://' + path), strict=True)
    diffs = {}
    for mode in ('eval', 'train'):
        model.train(mode == 'train')
        outputs: List[torch.Tensor] = model(reference['inputs'])
        for i, (ours, theirs) in enumerate(zip(outputs, reference[mode], strict=True)):
            assert ours.shape == theirs.shape, (mode, i, ours.shape, theirs.shape)
            diffs[f'{mode}/stage{i}'] = (ours - theirs).abs().max().item()
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', required=True, help='the unpacked Peterande/D-FINE')
    parser.add_argument('--ref-python', required=True, help="the original's interpreter")
    parser.add_argument('--work-dir', default=None, help='default: ROOT/../parity')
    parser.add_argument('--only', nargs='+', choices=[v.arch for v in VARIANTS])
    parser.add_argument('--regenerate', action='store_true')
    parser.add_argument('--tol', type=float, default=1e-5)
    args = parser.parse_args()
    args.root = os.path.abspath(args.root)
    work = os.path.abspath(args.work_dir or os.path.join(args.root, '..', 'parity'))
    os.makedirs(work, exist_ok=True)
    register_all_modules()
    print('| backbone | models | use_lab | norm | eval stages 0-3 | train stages 0-3 | result |')
    print('|---|---|---|---|---|---|---|')
    failed = []
    for variant in VARIANTS:
        if args.only and variant.arch not in args.only:
            continue
        path = os.path.join(work, f'hgnetv2_{variant.arch}.pth')
        if args.regenerate or not os.path.exists(path):
            make_reference(variant, args, path)
        diffs = compare(path)
        worst = max(diffs.values())
        if worst > args.tol:
            failed.append(variant.arch)
        cells = [' / '.join(f'{diffs[f"{mode}/stage{i}"]:.1e}' for i in range(4))
                 for mode in ('eval', 'train')]
        norm = 'frozen BN' if variant.freeze_norm else 'BN'
        print(f'| {variant.arch} | {variant.models} | {variant.use_lab} | {norm} | {cells[0]} | '
              f'{cells[1]} | {"PASS" if worst <= args.tol else "FAIL"} |', flush=True)
    sys.exit(f'above {args.tol}: {failed}' if failed else 0)


if __name__ == '__main__':
    main()
