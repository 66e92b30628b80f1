"""Runs a detector on an image or a folder of images and saves them with the predictions drawn.

    python tools/image_demo.py IMG CONFIG [--weights CKPT] --out-dir DIR
                               [--device cpu] [--score-thr 0.3]

IMG is an image file or a folder (its image files, not recursive). Each image is written to
DIR under its own name, with the boxes, class names and scores above ``--score-thr`` drawn by
mmdet's ``DetLocalVisualizer``. Class names come from the checkpoint's ``meta.dataset_meta``,
else from the config's test dataset ``metainfo``. Without ``--weights`` the model keeps its
random initialisation (a warning says so): useful only to check that a config runs.
"""
import argparse
import os
import os.path as osp
import sys
import warnings
from typing import List

import mmcv
import torch
from mmdet.apis import inference_detector, init_detector
from mmdet.visualization import DetLocalVisualizer
from mmengine.config import Config

from detr_plugin.utils import (CheckpointError, allow_full_checkpoint_loading,
                               load_detector_checkpoint)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


class DemoError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Draw a detector\'s predictions on images')
    parser.add_argument('img', help='an image file or a folder of images')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--weights', help='checkpoint file; without it the model is untrained')
    parser.add_argument('--out-dir', required=True, help='folder for the drawn images')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='draw only predictions scoring at least this')
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


def build_model(cfg: Config, weights, device: str) -> torch.nn.Module:
    """The detector in eval mode, with ``dataset_meta`` from the checkpoint or else the config.

    The weights are loaded with ``load_detector_checkpoint``: a checkpoint of another
    architecture is a DemoError naming the mismatched keys (mmengine's loader only warns).
    """
    if weights is None:
        warnings.warn('no --weights given: the model is randomly initialised, its predictions '
                      'are meaningless')
    # init_detector warns that it falls back to COCO's classes (with simplefilter('once'), which
    # overrides an 'ignore' filter); the classes are set below, so the warning is only recorded
    with warnings.catch_warnings(record=True):
        model = init_detector(cfg, None, device=device)
    meta = {}
    if weights is not None:
        try:
            meta = load_detector_checkpoint(model, weights)
        except CheckpointError as error:
            raise DemoError(error) from None
    classes = (meta.get('dataset_meta') or {}).get('classes') or meta.get('CLASSES')
    if classes is None:
        metainfo = cfg.get('test_dataloader', {}).get('dataset', {}).get('metainfo') or {}
        classes = metainfo.get('classes')
    if classes is not None:
        model.dataset_meta = dict(model.dataset_meta, classes=tuple(classes))
    return model


def draw_predictions(model, images: List[str], out_dir: str, score_thr: float) -> List[str]:
    """Runs the model on each image and writes it with its predictions into ``out_dir``."""
    visualizer = DetLocalVisualizer(name='image_demo')
    visualizer.dataset_meta = model.dataset_meta
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for path in images:
        image = mmcv.imread(path, channel_order='rgb')  # (H, W, 3) uint8
        if image is None:
            raise DemoError(f'cannot read image {path!r}')
        result = inference_detector(model, path)
        out_file = osp.join(out_dir, osp.basename(path))
        visualizer.add_datasample(osp.basename(path), image, data_sample=result, draw_gt=False,
                                  show=False, pred_score_thr=score_thr, out_file=out_file)
        written.append(out_file)
    return written


def main(argv=None) -> List[str]:
    args = parse_args(argv)
    images = list_images(args.img)
    allow_full_checkpoint_loading()
    if not osp.isfile(args.config):
        raise DemoError(f'config {args.config!r} does not exist')
    cfg = Config.fromfile(args.config)
    model = build_model(cfg, args.weights, args.device)
    written = draw_predictions(model, images, args.out_dir, args.score_thr)
    print(f'wrote {len(written)} image(s) to {args.out_dir}')
    return written


if __name__ == '__main__':
    try:
        main()
    except DemoError as error:
        sys.exit(f'error: {error}')
