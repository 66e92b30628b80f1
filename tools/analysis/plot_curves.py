"""Plots training and validation curves from mmengine's ``scalars.json``, one subplot per key.

    python tools/analysis/plot_curves.py WORK_DIR/TIMESTAMP/vis_data/scalars.json \\
        --keys loss coco/bbox_mAP [--out curves.png]

``scalars.json`` holds one JSON object per line: training rows carry ``step`` (the iteration)
and the losses, validation rows carry ``step`` (the epoch) and the metrics such as
``coco/bbox_mAP`` (the iteration in an iteration-based run). Each key is drawn against the
``step`` of the rows that have it, the axis named for what it counts.
"""
import argparse
import json
import sys
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use('Agg')  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402


class PlotError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Plot curves from mmengine scalars.json')
    parser.add_argument('scalars', help='path to vis_data/scalars.json')
    parser.add_argument('--keys', nargs='+', default=['loss'], help='keys to plot')
    parser.add_argument('--out', default='curves.png', help='PNG file to write')
    return parser.parse_args(argv)


def read_scalars(path: str) -> List[dict]:
    """The rows of a scalars.json file (JSON lines), skipping blank lines."""
    try:
        with open(path) as file:
            lines = [line for line in file if line.strip()]
    except OSError as error:
        raise PlotError(f'cannot read {path!r}: {error.strerror}') from None
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise PlotError(f'{path!r} line {number} is not JSON') from None
    return rows


def collect_curves(rows: List[dict], keys: List[str]) -> Dict[str, Tuple[list, list]]:
    """For each key, the (steps, values) of the rows that hold it; PlotError for an absent key."""
    available = sorted({key for row in rows for key in row} - {'step', 'iter', 'epoch'})
    missing = [key for key in keys if key not in available]
    if missing:
        raise PlotError(f'key(s) {missing} not in the file; available: {available}')
    curves = {}
    for key in keys:
        points = [(row.get('step', row.get('iter')), row[key]) for row in rows if key in row]
        curves[key] = ([step for step, _ in points], [value for _, value in points])
    return curves


def x_label(rows: List[dict], key: str) -> str:
    """What ``step`` counts for ``key``: iterations for rows of the training loop (they carry
    ``iter``); for validation rows, epochs in an epoch-based run (its training rows carry
    ``epoch``), else iterations."""
    own = [row for row in rows if key in row]
    if all('iter' in row for row in own) or not any('epoch' in row for row in rows):
        return 'iteration'
    return 'epoch'


def plot_curves(curves: Dict[str, Tuple[list, list]], out: str,
                x_labels: Optional[Dict[str, str]] = None) -> None:
    """Saves one subplot per key, stacked vertically, to the PNG file ``out``."""
    figure, axes = plt.subplots(len(curves), 1, figsize=(6, 3 * len(curves)), squeeze=False)
    for axis, (key, (steps, values)) in zip(axes[:, 0], curves.items()):
        axis.plot(steps, values, marker='o' if len(steps) < 30 else None)
        axis.set_title(key)
        axis.set_xlabel((x_labels or {}).get(key, 'step'))
        axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def main(argv=None) -> str:
    args = parse_args(argv)
    rows = read_scalars(args.scalars)
    plot_curves(collect_curves(rows, args.keys), args.out,
                {key: x_label(rows, key) for key in args.keys})
    print(f'saved {args.out}')
    return args.out


if __name__ == '__main__':
    try:
        main()
    except PlotError as error:
        sys.exit(f'error: {error}')
