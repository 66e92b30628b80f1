"""Runs a detector on an image or a folder of images and saves them with the predictions drawn.

    python tools/image_demo.py IMG CONFIG [--weights CKPT] --out-dir DIR
                               [--device cpu] [--score-thr 0.3] [--cfg-options KEY=VALUE ...]
                               [--trust-checkpoint]

IMG is an image file or a folder (its image files, not recursive). Each image is written to
DIR under its own name, with the boxes, class names and scores above ``--score-thr`` drawn by
mmdet's ``DetLocalVisualizer``. Images that cannot be read are skipped and named at the end
(a single unreadable IMG is an error). Class names come from the checkpoint's
``meta.dataset_meta``, else from the config's test dataset ``metainfo``. Without ``--weights``
the model is randomly initialised (a warning says so): useful only to check that a config runs.
"""
import argparse
import os
import os.path as osp
import sys
import warnings
from typing import List, NamedTuple, Optional

import mmcv
import numpy as np
import torch
from mmdet.apis import inference_detector
from mmdet.visualization import DetLocalVisualizer
from mmengine.config import DictAction

from detr_plugin.utils import TRUST_OPTION, CheckpointError, load_detector

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


class DemoError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class Drawn(NamedTuple):
    written: List[str]  # the drawn images' paths in --out-dir
    skipped: List[str]  # input images that cannot be read


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Draw a detector\'s predictions on images')
    parser.add_argument('img', help='an image file or a folder of images')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--weights', help='checkpoint file; without it the model is untrained')
    parser.add_argument('--out-dir', required=True, help='folder for the drawn images')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='draw only predictions scoring at least this')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.test_cfg.max_per_img=50')
    parser.add_argument(TRUST_OPTION, action='store_true',
                        help='read --weights with full unpickling, which can run code: only for '
                        'files you trust (by default only weights are read)')
    return parser.parse_args(argv)


def list_images(path: str) -> List[str]:
    """The image files named by ``path``: itself if a file, else the folder's image files, sorted."""
    if osp.isdir(path):
        images = sorted(osp.join(path, name) for name in os.listdir(path)
                        if name.lower().endswith(IMAGE_EXTENSIONS))
        if not images:
            raise DemoError(f'no image files ({", ".join(IMAGE_EXTENSIONS)}) in folder {path!r}')
        return images
    if not osp.isfile(path):
        raise DemoError(f'image path {path!r} does not exist')
    return [path]


def build_model(config: str, weights: Optional[str], device: str, cfg_options=None,
                trust: bool = False) -> torch.nn.Module:
    """The detector of ``load_detector``; a checkpoint that does not fit is a DemoError."""
    if weights is None:
        warnings.warn('no --weights given: the model is randomly initialised, its predictions '
                      'are meaningless')
    try:
        return load_detector(config, weights, device, cfg_options, trust=trust)
    except CheckpointError as error:
        raise DemoError(error) from None


def read_image(path: str) -> Optional[np.ndarray]:
    """(H, W, 3) uint8 BGR, or None when the file cannot be decoded as an image."""
    try:
        return mmcv.imread(path)
    except Exception:  # cv2 / Pillow errors of a corrupt file
        return None


def draw_predictions(model, images: List[str], out_dir: str, score_thr: float) -> Drawn:
    """Runs the model on each readable image and writes it with its predictions into
    ``out_dir``; an unreadable image is skipped."""
    visualizer = DetLocalVisualizer(name='image_demo')
    visualizer.dataset_meta = model.dataset_meta
    os.makedirs(out_dir, exist_ok=True)
    written, skipped = [], []
    for path in images:
        image = read_image(path)
        if image is None:
            skipped.append(path)
            continue
        result = inference_detector(model, image)
        out_file = osp.join(out_dir, osp.basename(path))
        visualizer.add_datasample(osp.basename(path), mmcv.bgr2rgb(image), data_sample=result,
                                  draw_gt=False, show=False, pred_score_thr=score_thr,
                                  out_file=out_file)
        written.append(out_file)
    return Drawn(written, skipped)


def main(argv=None) -> Drawn:
    args = parse_args(argv)
    images = list_images(args.img)
    if not osp.isfile(args.config):
        raise DemoError(f'config {args.config!r} does not exist')
    model = build_model(args.config, args.weights, args.device, args.cfg_options,
                        args.trust_checkpoint)
    drawn = draw_predictions(model, images, args.out_dir, args.score_thr)
    if not drawn.written:
        raise DemoError(f'cannot read image {drawn.skipped[0]!r}' if len(drawn.skipped) == 1 else
                        f'none of the {len(drawn.skipped)} images can be read, e.g. '
                        f'{drawn.skipped[0]!r}')
    print(f'wrote {len(drawn.written)} image(s) to {args.out_dir}')
    if drawn.skipped:
        print(f'skipped {len(drawn.skipped)} image(s) that cannot be read: '
              + ', '.join(drawn.skipped), file=sys.stderr)
    return drawn


if __name__ == '__main__':
    try:
        main()
    except DemoError as error:
        sys.exit(f'error: {error}')
