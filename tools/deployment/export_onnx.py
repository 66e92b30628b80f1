"""Exports a detector to ONNX, then checks the graph against PyTorch with onnxruntime.

    python tools/deployment/export_onnx.py CONFIG CHECKPOINT --out model.onnx
                                           [--shape H W] [--dynamic-batch] [--opset 17]
                                           [--atol 1e-4] [--trust-checkpoint]

The graph is ``detr_plugin.deploy.End2EndDetector`` (DETR, Deformable DETR, RT-DETR):

- input ``images``: (bs, 3, H, W) float32, the image resized to exactly H x W (multiples of 32,
  no padding), its channels in the order the model was trained on (RGB when the config's
  ``data_preprocessor`` has ``bgr_to_rgb=True``), normalized as ``(pixel - mean) / std`` with
  that data_preprocessor's ``mean`` and ``std``. The graph does not normalize: these three are
  printed and stored in the model's ``metadata_props`` (with the checkpoint's class names).
- outputs ``boxes`` (bs, k, 4) float32, xyxy pixels of the input; ``scores`` (bs, k) float32;
  ``labels`` (bs, k) int64; k is the head's ``test_cfg.max_per_img``.

bs is 1, or free with --dynamic-batch. Multi-scale deformable attention exports through its
PyTorch ``grid_sample`` path (ONNX GridSample: opset >= 16) whatever DETR_PLUGIN_MSDA_BACKEND
says. After export, PyTorch and onnxruntime run one random image batch (2 images with
--dynamic-batch); the script prints the largest differences and exits with status 1 unless
scores and box coordinates (as fractions of the image size) agree within --atol and every
detection has a PyTorch match of its label (see ``compare``: tied scores may come in another
order). Needs ``pip install onnx onnxruntime`` (or ``pip install -e .[onnx]``).
"""
import argparse
import importlib
import json
import os.path as osp
import sys
import warnings
from typing import List, NamedTuple, Tuple

import numpy as np
import torch
from mmengine.config import Config

from detr_plugin.deploy import End2EndDetector
from detr_plugin.utils import TRUST_OPTION, CheckpointError, load_detector

MIN_OPSET = 16  # GridSample
STRIDE = 32  # the backbones' largest stride
OUTPUT_NAMES = ['boxes', 'scores', 'labels']


class ExportError(Exception):
    """A problem with the user's input or environment, reported as one line without traceback."""


class Preprocessing(NamedTuple):
    """What the graph expects of its input, from the config's data_preprocessor."""
    mean: List[float]  # per channel, in channel_order
    std: List[float]
    channel_order: str  # 'rgb' or 'bgr'


class Comparison(NamedTuple):
    """onnxruntime against PyTorch on one batch, each detection against its match (see compare)."""
    boxes: float  # max |difference| of box coordinates, pixels
    boxes_relative: float  # max |difference| of box coordinates / image width or height
    scores: float  # max |difference| of scores
    matched: int  # detections with a match
    total: int


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export a detector to ONNX and check it')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--shape', type=int, nargs=2, default=[640, 640], metavar=('H', 'W'),
                        help=f'input height and width, multiples of {STRIDE} (default 640 640)')
    parser.add_argument('--dynamic-batch', action='store_true',
                        help='leave the batch size free (else it is 1)')
    parser.add_argument('--opset', type=int, default=17, help=f'ONNX opset, >= {MIN_OPSET}')
    parser.add_argument('--atol', type=float, default=1e-4,
                        help='largest difference allowed between onnxruntime and PyTorch, on '
                        'scores and on box coordinates divided by the image size')
    parser.add_argument(TRUST_OPTION, action='store_true',
                        help='read the checkpoint with full unpickling, which can run code: only '
                        'for files you trust (by default only weights are read)')
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    h, w = args.shape
    if h <= 0 or w <= 0 or h % STRIDE or w % STRIDE:
        raise ExportError(f'--shape {h} {w}: height and width must be positive multiples of '
                          f'{STRIDE}, e.g. {max(STRIDE, round(h / STRIDE) * STRIDE)} '
                          f'{max(STRIDE, round(w / STRIDE) * STRIDE)}')
    if args.opset < MIN_OPSET:
        raise ExportError(f'--opset {args.opset}: ONNX GridSample, which deformable attention '
                          f'needs, exists from opset {MIN_OPSET}')
    if not osp.isfile(args.config):
        raise ExportError(f'config {args.config!r} does not exist')
    out_dir = osp.dirname(osp.abspath(args.out))
    if not osp.isdir(out_dir):
        raise ExportError(f'--out {args.out!r}: folder {out_dir!r} does not exist')


def import_onnx():
    """(onnx, onnxruntime); ExportError saying what to install when either is missing."""
    modules = []
    for name in ('onnx', 'onnxruntime'):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            raise ExportError(f'{name} is not installed: pip install onnx onnxruntime '
                              '(or pip install -e .[onnx])') from None
    return tuple(modules)


def build_detector(cfg: Config, checkpoint: str, trust: bool = False) -> End2EndDetector:
    """The detector of ``load_detector``, wrapped (its class names in ``dataset_meta``)."""
    try:
        detector = load_detector(cfg, checkpoint, trust=trust)
    except CheckpointError as error:
        raise ExportError(error) from None
    try:
        return End2EndDetector(detector)
    except TypeError as error:  # not one of detr_plugin's detectors
        raise ExportError(error) from None


def preprocessing_of(cfg: Config) -> Preprocessing:
    preprocessor = cfg.model.get('data_preprocessor') or {}
    # mmdet loads images as BGR; either flag swaps the channels before normalization
    swapped = preprocessor.get('bgr_to_rgb', False) or preprocessor.get('rgb_to_bgr', False)
    return Preprocessing(mean=[float(m) for m in preprocessor.get('mean') or (0., 0., 0.)],
                         std=[float(s) for s in preprocessor.get('std') or (1., 1., 1.)],
                         channel_order='rgb' if swapped else 'bgr')


def random_images(batch: int, shape: List[int], prep: Preprocessing, seed: int) -> torch.Tensor:
    """(batch, 3, H, W) uniformly random pixels, normalized as the graph expects."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, 3, *shape), generator=generator).float()
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    return (pixels - mean) / std


def export(model: End2EndDetector, images: torch.Tensor, out: str, opset: int,
           dynamic_batch: bool) -> None:
    dynamic_axes = {name: {0: 'batch'} for name in ['images'] + OUTPUT_NAMES}
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about every shape it turns into a constant: H and W are fixed by
        # design, and a baked-in batch size would show when the check runs 2 images.
        warnings.simplefilter('ignore')
        torch.onnx.export(model, (images,), out, dynamo=False, opset_version=opset,
                          input_names=['images'], output_names=OUTPUT_NAMES,
                          dynamic_axes=dynamic_axes if dynamic_batch else None)


def add_metadata(onnx, out: str, prep: Preprocessing, dataset_meta: dict) -> None:
    """Stores the input's preprocessing and the class names in the model's metadata_props."""
    proto = onnx.load(out)
    props = {key: json.dumps(value) for key, value in prep._asdict().items()}
    classes = dataset_meta.get('classes')
    if classes is not None:
        props['classes'] = json.dumps(list(classes))
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    onnx.save(proto, out)


def compare(model: End2EndDetector, onnxruntime, out: str, images: torch.Tensor,
            atol: float) -> Comparison:
    """Runs both on ``images`` and matches each onnxruntime detection to a PyTorch one.

    top-k orders detections of equal scores arbitrarily (random weights give many), and the two
    may break such ties differently; so a detection's match is, among the PyTorch detections of
    its image with its label and a score within ``atol``, the one with the closest box.
    """
    session = onnxruntime.InferenceSession(out, providers=['CPUExecutionProvider'])
    got = session.run(OUTPUT_NAMES, {'images': images.numpy()})  # (bs, k, 4), (bs, k), (bs, k)
    with torch.no_grad():
        expected = [t.numpy() for t in model(images)]
    h, w = images.shape[-2:]
    size = np.array([w, h, w, h], dtype=np.float32)
    # (bs, k, k, 4): onnxruntime detection i against PyTorch detection j
    box_diff = np.abs(got[0][:, :, None] - expected[0][:, None])
    relative = (box_diff / size).max(-1)  # (bs, k, k)
    candidates = ((got[2][:, :, None] == expected[2][:, None])
                  & (np.abs(got[1][:, :, None] - expected[1][:, None]) <= atol))
    best = np.where(candidates, relative, np.inf).argmin(-1)[..., None]  # (bs, k, 1)
    matched = candidates.any(-1)  # (bs, k)
    return Comparison(
        boxes=float(np.take_along_axis(box_diff.max(-1), best, -1)[matched].max(initial=0)),
        boxes_relative=float(np.take_along_axis(relative, best, -1)[matched].max(initial=0)),
        scores=float(np.abs(got[1] - expected[1]).max()),  # slot by slot: ties are equal
        matched=int(matched.sum()), total=int(matched.size))


def report(result: Comparison, atol: float) -> bool:
    """Prints the comparison; whether it is within ``atol`` with every detection matched."""
    ok = (result.boxes_relative <= atol and result.scores <= atol
          and result.matched == result.total)
    print(f'onnxruntime vs PyTorch: max |boxes diff| {result.boxes:.3g} px '
          f'({result.boxes_relative:.3g} of the image size), max |scores diff| '
          f'{result.scores:.3g}, detections matched (label, score) {result.matched}/'
          f'{result.total}: {"OK" if ok else "FAILED"} (--atol {atol:g})')
    return ok


def main(argv=None) -> bool:
    """Exports and checks; returns whether onnxruntime agrees with PyTorch within --atol."""
    args = parse_args(argv)
    check_args(args)
    onnx, onnxruntime = import_onnx()
    cfg = Config.fromfile(args.config)
    model = build_detector(cfg, args.checkpoint, args.trust_checkpoint)
    prep = preprocessing_of(cfg)
    export(model, random_images(1, args.shape, prep, seed=0), args.out, args.opset,
           args.dynamic_batch)
    add_metadata(onnx, args.out, prep, model.detector.dataset_meta)
    batch = 'bs' if args.dynamic_batch else '1'
    print(f'wrote {args.out}: images ({batch}, 3, {args.shape[0]}, {args.shape[1]}) float32, '
          f'{prep.channel_order.upper()}, (pixel - {prep.mean}) / {prep.std} -> '
          f'boxes ({batch}, k, 4) xyxy pixels, scores ({batch}, k), labels ({batch}, k) int64')
    # other images than those traced, so that values baked into the graph would show
    images = random_images(2 if args.dynamic_batch else 1, args.shape, prep, seed=1)
    return report(compare(model, onnxruntime, args.out, images, args.atol), args.atol)


if __name__ == '__main__':
    try:
        sys.exit(0 if main() else 1)
    except ExportError as error:
        sys.exit(f'error: {error}')
