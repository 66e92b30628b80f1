"""Runs every converted-checkpoint parity check of docs/parity.md and prints one PASS/FAIL table.

    .venv/bin/python tools/model_converters/run_parity_checks.py /work/ref \\
        --ref-python /work/ref_env/bin/python [--only detr_r50 r18vd ...] [--regenerate]

REF_ROOT holds the unpacked originals (``ddetr/``, ``detr/``, ``rtdetr_pytorch/``,
``rtdetrv2_pytorch/``, see docs/parity.md) and receives the work folder ``REF_ROOT/parity/``
(``--work-dir``). For every check the original's reference is made once, by --ref-python (the
original's environment), and reused on later runs unless --regenerate: detr_parity_reference.py
writes ``<name>.pth`` + ``<name>_io.pth``, rtdetr_parity_reference.py and
rtdetrv2_parity_reference.py ``<name>.pth``. Then, by this interpreter (detr_plugin's
environment) and with the tools and package of --repo (default: the checkout holding this
script), the checkpoint is converted and compared: compare_with_original.py for DETR and
Deformable DETR, rtdetr_parity_check.py for RT-DETR and RT-DETRv2. Every step's output goes to
``<work-dir>/logs/``; each comparison's differences to ``<work-dir>/<name>.diffs.json``.

Exits 1 when a check fails (a difference above 1e-4) or a step errs.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, NamedTuple, Optional

TOOLS = 'tools/model_converters'
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Check(NamedTuple):
    name: str  # file stem under the work folder
    label: str  # model, as docs/parity.md's tables name it
    family: str  # 'detr' (compare_with_original.py) or 'rtdetr' (rtdetr_parity_check.py)
    original: str  # the unpacked original, under REF_ROOT
    reference_args: List[str]  # the reference tool and its arguments, {root} = the original
    config: str  # our config, relative to the repository
    converter: Optional[str] = None  # DETR family: converter tool (RT-DETR converts in the check)


def _ddetr(variant: str, label: str, config: str) -> Check:
    return Check(f'ddetr_{variant}', label, 'detr', 'ddetr',
                 ['detr_parity_reference.py', '--root', '{root}', '--model',
                  'deformable_detr', '--variant', variant],
                 f'configs/deformable_detr/{config}', 'deformable_detr_to_plugin.py')


def _rtdetr(name: str, label: str, config: str) -> Check:
    return Check(name, label, 'rtdetr', 'rtdetr_pytorch',
                 ['rtdetr_parity_reference.py', '--rtdetr-root', '{root}',
                  '--config', f'rtdetr_{name}_6x_coco.yml'], f'configs/rtdetr/{config}')


def _rtdetrv2(name: str, label: str, original: str, config: str, *options: str) -> Check:
    return Check(name, label, 'rtdetr', 'rtdetrv2_pytorch',
                 ['rtdetrv2_parity_reference.py', '--root', '{root}',
                  '--config', original, *options], f'configs/rtdetrv2/{config}')


CHECKS = (
    Check('detr_r50', 'DETR R50', 'detr', 'detr',
          ['detr_parity_reference.py', '--root', '{root}', '--model', 'detr'],
          'configs/detr/detr_r50_8xb2-150e_coco.py', 'detr_to_plugin.py'),
    _ddetr('plain', 'Deformable DETR', 'deformable-detr_r50_16xb2-50e_coco.py'),
    _ddetr('refine', 'Deformable DETR + refine', 'deformable-detr-refine_r50_16xb2-50e_coco.py'),
    _ddetr('twostage', 'Deformable DETR + two-stage',
           'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py'),
    _rtdetr('r18vd', 'RT-DETR R18-vd', 'rtdetr_r18vd_8xb2-72e_coco.py'),
    _rtdetr('r34vd', 'RT-DETR R34-vd', 'rtdetr_r34vd_8xb2-72e_coco.py'),
    _rtdetr('r50vd', 'RT-DETR R50-vd', 'rtdetr_r50vd_8xb2-72e_coco.py'),
    _rtdetr('r101vd', 'RT-DETR R101-vd', 'rtdetr_r101vd_8xb2-72e_coco.py'),
    _rtdetr('r50vd_m', 'RT-DETR R50-vd-m', 'rtdetr_r50vd-m_8xb2-72e_coco.py'),
    _rtdetrv2('v2_r18vd', 'RT-DETRv2 R18-vd', 'rtdetrv2_r18vd_120e_coco.yml',
              'rtdetrv2_r18vd_8xb2-120e_coco.py'),
    _rtdetrv2('v2_r18vd_sp1', 'RT-DETRv2 R18-vd sp1', 'rtdetrv2_r18vd_sp1_120e_coco.yml',
              'rtdetrv2_r18vd-sp1_8xb2-120e_coco.py'),
    # in float32 its last layer's denoising logits differ by up to 2e-4 between the original's own
    # float32 and float64 runs (docs/parity.md): float64 tells a real difference from rounding
    _rtdetrv2('v2_r18vd_sp1_float64', 'RT-DETRv2 R18-vd sp1 (float64)',
              'rtdetrv2_r18vd_sp1_120e_coco.yml', 'rtdetrv2_r18vd-sp1_8xb2-120e_coco.py',
              '--float64'),
    _rtdetrv2('v2_r50vd', 'RT-DETRv2 R50-vd', 'rtdetrv2_r50vd_6x_coco.yml',
              'rtdetrv2_r50vd_8xb2-72e_coco.py'),
    # discrete sampling in float64: in float32 a sampling point lies on a cell border (see
    # docs/parity.md), and which cell it takes is decided by rounding
    _rtdetrv2('v2_r18vd_dsp_float64', 'RT-DETRv2 R18-vd dsp (float64)',
              'rtdetrv2_r18vd_dsp_3x_coco.yml', 'rtdetrv2_r18vd-dsp_8xb2-36e_coco.py',
              '--float64'),
)


class Outcome(NamedTuple):
    worst: float  # inf when a step failed
    details: str  # the grouped differences, or the failing step's last line
    seconds: float


def run_step(cmd: List[str], log: str, cwd: str, env: dict) -> bool:
    """Runs one tool, its output into ``log``; True when it exited 0."""
    with open(log, 'w') as f:
        f.write(' '.join(cmd) + '\n')
        f.flush()
        done = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    return done.returncode == 0


def last_line(log: str) -> str:
    lines = [line.strip() for line in open(log) if line.strip()]
    return lines[-1][:160] if lines else '(no output)'


def _max(diffs: Dict[str, float], *prefixes: str) -> float:
    return max((d for k, d in diffs.items() if k.startswith(prefixes)), default=float('nan'))


def summarize(family: str, result: dict) -> str:
    """The grouped maxima that docs/parity.md's tables report."""
    d = result['diffs']
    if family == 'detr':
        text = (f"logits {_max(d, 'pred_logits', 'aux_logits'):.1e} / "
                f"boxes {_max(d, 'pred_boxes', 'aux_boxes'):.1e}")
        if 'enc_logits' in d:
            text += f" (encoder {d['enc_logits']:.1e} / {d['enc_boxes']:.1e})"
        return text
    permuted = [k.split('/')[1].split(' ')[0] for k, o in result.get('orders', {}).items()
                if o == 'permuted']
    losses = [k for k in d if k.startswith('loss/')]
    layers = (f" / layers {_max(d, 'eval/layer'):.1e} / enc {_max(d, 'eval/enc'):.1e}"
              if any(k.startswith('eval/layer') for k in d) else '')  # RT-DETRv2's references
    return (f"eval {_max(d, 'eval/queries'):.1e} / {_max(d, 'eval/top300'):.1e}{layers}; "
            f"train {_max(d, 'train/layer'):.1e} / enc {_max(d, 'train/enc'):.1e} / "
            f"dn {_max(d, 'train/dn'):.1e}; losses {_max(d, 'loss/'):.1e} ({len(losses)} terms)"
            + (f"; permuted: {', '.join(permuted)}" if permuted else ''))


def run_check(check: Check, args, env: dict) -> Outcome:
    start = time.time()
    work, logs = args.work_dir, os.path.join(args.work_dir, 'logs')
    reference = os.path.join(work, f'{check.name}.pth')
    made = [reference] + ([os.path.join(work, f'{check.name}_io.pth')]
                          if check.family == 'detr' else [])
    if args.regenerate or not all(os.path.exists(f) for f in made):
        cmd = [args.ref_python, '-W', 'ignore',
               os.path.join(args.repo, TOOLS, check.reference_args[0])]
        root = os.path.join(args.ref_root, check.original)
        cmd += [a.format(root=root) for a in check.reference_args[1:]]
        cmd += (['--out-dir', work] if check.family == 'detr' else ['--out', reference])
        log = os.path.join(logs, f'{check.name}.reference.log')
        # the original's environment: none of detr_plugin's paths
        ref_env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
        if not run_step(cmd, log, args.ref_root, ref_env):
            return Outcome(float('inf'), f'reference: {last_line(log)}', time.time() - start)
    diffs_json = os.path.join(work, f'{check.name}.diffs.json')
    ours = [args.python, '-W', 'ignore']
    if check.family == 'detr':
        converted = os.path.join(work, f'{check.name}.converted.pth')
        log = os.path.join(logs, f'{check.name}.convert.log')
        if not run_step(ours + [f'{TOOLS}/{check.converter}', reference, converted], log,
                        args.repo, env):
            return Outcome(float('inf'), f'convert: {last_line(log)}', time.time() - start)
        cmd = ours + [f'{TOOLS}/compare_with_original.py', check.config, converted,
                      os.path.join(work, f'{check.name}_io.pth'),
                      '--cfg-options', 'model.bbox_head.num_classes=91']
    else:
        cmd = ours + [f'{TOOLS}/rtdetr_parity_check.py', reference, check.config]
    if os.path.exists(diffs_json):
        os.remove(diffs_json)
    log = os.path.join(logs, f'{check.name}.compare.log')
    run_step(cmd + ['--json', diffs_json], log, args.repo, env)
    if not os.path.exists(diffs_json):
        return Outcome(float('inf'), f'compare: {last_line(log)}', time.time() - start)
    result = json.load(open(diffs_json))
    return Outcome(max(result['diffs'].values()), summarize(check.family, result),
                   time.time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('ref_root', help='folder with the unpacked originals: ddetr/, detr/, '
                        'rtdetr_pytorch/, rtdetrv2_pytorch/')
    parser.add_argument('--ref-python', required=True,
                        help="the originals' environment's interpreter (torch, torchvision, scipy)")
    parser.add_argument('--python', default=sys.executable,
                        help="interpreter of detr_plugin's environment (default: this one)")
    parser.add_argument('--repo', default=REPO,
                        help='detr_plugin checkout whose tools, configs and package are checked')
    parser.add_argument('--work-dir', help='references, converted checkpoints, logs '
                        '(default: REF_ROOT/parity)')
    parser.add_argument('--only', nargs='+', choices=[c.name for c in CHECKS],
                        help='run these checks only')
    parser.add_argument('--regenerate', action='store_true',
                        help="remake the original's references even where present")
    parser.add_argument('--tol', type=float, default=1e-4)
    args = parser.parse_args()
    args.ref_root = os.path.abspath(args.ref_root)
    args.repo = os.path.abspath(args.repo)
    args.work_dir = os.path.abspath(args.work_dir or os.path.join(args.ref_root, 'parity'))
    checks = [c for c in CHECKS if not args.only or c.name in args.only]
    for original in sorted({c.original for c in checks}):
        if not os.path.isdir(os.path.join(args.ref_root, original)):
            sys.exit(f'{args.ref_root}/{original} missing: unpack the originals as '
                     'docs/parity.md says')
    os.makedirs(os.path.join(args.work_dir, 'logs'), exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [args.repo] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))

    where = subprocess.run([args.python, '-c', 'import detr_plugin; print(detr_plugin.__file__)'],
                           cwd=args.repo, env=env, capture_output=True, text=True)
    print(f"detr_plugin: {(where.stdout or where.stderr).strip().splitlines()[-1]}", flush=True)
    rows = []
    for check in checks:
        outcome = run_check(check, args, env)
        verdict = 'PASS' if outcome.worst <= args.tol else (
            'ERROR' if outcome.worst == float('inf') else 'FAIL')
        rows.append((check, outcome, verdict))
        print(f'{check.label}: {verdict} {outcome.worst:.1e} ({outcome.seconds:.0f} s)', flush=True)

    print(f'\n| model | max abs diff | details | result |\n|---|---|---|---|')
    for check, outcome, verdict in rows:
        print(f'| {check.label} | {outcome.worst:.1e} | {outcome.details} | {verdict} |')
    failed = [check.name for check, _, verdict in rows if verdict != 'PASS']
    print(f'\n{len(rows) - len(failed)} passed, {len(failed)} failed'
          + (f" ({', '.join(failed)}; logs in {args.work_dir}/logs)" if failed else ''))
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
