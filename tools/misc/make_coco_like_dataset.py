"""Writes a synthetic detection dataset with COCO's image sizes, object counts and box sizes.

    python tools/misc/make_coco_like_dataset.py [--out data/coco_like] [--num-images 2000]
                                                [--seed 0] [--max-side 640]

A stand-in for COCO train2017 when measuring training speed (tools/analysis/benchmark_training.py):
the loaders decode, augment and collate the same amount of data as on COCO, without the 19 GB
download. The content is not meant to be learned. Layout under ``--out``, as COCO's::

    train2017/000000000001.jpg ...                  # RGB JPEGs, quality 90
    annotations/instances_train2017.json            # COCO format, COCO's 80 categories and ids

Statistics, each drawn per image or object from ``--seed`` (same arguments, byte-identical files):
- image size: the longer side is ``--max-side`` (COCO: 640); the shorter follows from an aspect
  ratio drawn from ``ASPECTS`` (landscape 4:3 and 3:2 most often, as in COCO);
- objects per image: geometric on 0, 1, ... with mean ``MEAN_OBJECTS`` (COCO: 7.3), at most
  ``MAX_OBJECTS``; 12% of the images have none (COCO: 1%; the loaders keep them);
- box size: ``sqrt(w * h)`` log-normal, fitted so that 41% of boxes are small (< 32 px) and 24%
  large (> 96 px), COCO's shares at a longer side of 640 (scaled with ``--max-side``);
  box aspect ``w / h`` log-normal around 1; every box inside its image;
- category: uniform over the 80; drawn as one of make_demo_dataset.py's shapes (by category id)
  in a per-category colour, over its textured background.

``bbox`` is the tight box of the drawn pixels, ``area`` their count (objects may occlude each
other, as in COCO, and are kept).
"""
import argparse
import json
import os
import sys
from typing import List, NamedTuple, Tuple

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_demo_dataset import CLASSES as SHAPES  # noqa: E402
from make_demo_dataset import Shape, shape_mask, textured_background  # noqa: E402

# (height / width, share of images): COCO train2017 is mostly 640x480, 640x427 and their portraits.
ASPECTS = ((0.75, 0.45), (2 / 3, 0.22), (0.5625, 0.05), (1.0, 0.06), (4 / 3, 0.13), (1.5, 0.09))
MEAN_OBJECTS = 7.3
MAX_OBJECTS = 20
# log-normal sqrt(area) at max side 640: P(< 32 px) = 0.41, P(< 96 px) = 0.76
BOX_LOG_MEAN, BOX_LOG_STD = np.log(41.8), 1.176
BOX_ASPECT_LOG_STD = 0.5
MIN_BOX_SIDE = 4
# COCO's 80 category ids: 1..90 without the ten ids that the 2014 release left unused.
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91)
                          if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


class Box(NamedTuple):
    """One object to draw, in pixels: its category index (0..79) and its box."""
    label: int
    x0: int
    y0: int
    w: int
    h: int


def image_size(rng: np.random.Generator, max_side: int) -> Tuple[int, int]:
    """(height, width) with the longer side ``max_side`` and a COCO-like aspect ratio."""
    ratios, shares = zip(*ASPECTS)
    ratio = ratios[rng.choice(len(ratios), p=np.array(shares) / sum(shares))]
    if ratio <= 1:
        return int(round(max_side * ratio)), max_side
    return max_side, int(round(max_side / ratio))


def random_boxes(rng: np.random.Generator, height: int, width: int, max_side: int) -> List[Box]:
    """Geometric number of boxes, log-normal sizes (scaled to ``max_side``), inside the image."""
    num = min(int(rng.geometric(1 / (1 + MEAN_OBJECTS))) - 1, MAX_OBJECTS)
    boxes = []
    for _ in range(num):
        side = np.exp(rng.normal(BOX_LOG_MEAN, BOX_LOG_STD)) * max_side / 640
        aspect = np.exp(rng.normal(0, BOX_ASPECT_LOG_STD))
        w = int(np.clip(round(side * np.sqrt(aspect)), MIN_BOX_SIDE, width))
        h = int(np.clip(round(side / np.sqrt(aspect)), MIN_BOX_SIDE, height))
        x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        boxes.append(Box(int(rng.integers(len(COCO_CATEGORY_IDS))), x0, y0, w, h))
    return boxes


def box_mask(box: Box) -> np.ndarray:
    """``(box.h, box.w)`` bool mask: the category's demo shape stretched over the box."""
    side = max(box.w, box.h)
    square = shape_mask(Shape(box.label % len(SHAPES), 0, 0, side), side)
    rows = (np.arange(box.h) + 0.5) * side // box.h
    cols = (np.arange(box.w) + 0.5) * side // box.w
    return square[np.ix_(rows.astype(int), cols.astype(int))]


def category_color(label: int) -> np.ndarray:
    """A fixed RGB colour per category, spread over the colour cube."""
    return np.array([(label * 53) % 256, (label * 101 + 80) % 256, (label * 197 + 160) % 256],
                    dtype=np.float64)


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A ``(height, width, 3)`` float32 textured image: make_demo_dataset.py's background drawn at
    a quarter of the size (its cost grows with the square of the side), stretched, plus pixel
    noise, so that the JPEGs are about as large as COCO's photos."""
    small = textured_background(rng, max(height, width) // 4)
    small = Image.fromarray(np.clip(np.rint(small), 0, 255).astype(np.uint8))
    img = np.asarray(small.resize((width, height), Image.BILINEAR), dtype=np.float32)
    return img + 8 * rng.standard_normal(img.shape, dtype=np.float32)


def render(rng: np.random.Generator, height: int, width: int,
           boxes: List[Box]) -> Tuple[np.ndarray, List[dict]]:
    """The ``(height, width, 3)`` uint8 image and one ``dict(bbox, area, label)`` per object
    (tight box of its drawn pixels, pixel count), in drawing order."""
    img = background(rng, height, width)
    objects = []
    for box in boxes:
        mask = box_mask(box)
        patch = img[box.y0:box.y0 + box.h, box.x0:box.x0 + box.w]
        patch[mask] = category_color(box.label) + rng.normal(0, 12, size=(int(mask.sum()), 3))
        ys, xs = np.nonzero(mask)
        objects.append(dict(
            bbox=[box.x0 + int(xs.min()), box.y0 + int(ys.min()),
                  int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
            area=int(mask.sum()), label=box.label))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects


def coco_categories() -> List[dict]:
    """COCO's 80 categories: their ids and mmdet's names, in id order."""
    from mmdet.datasets import CocoDataset
    names = CocoDataset.METAINFO['classes']
    return [dict(id=i, name=name) for i, name in zip(COCO_CATEGORY_IDS, names)]


def make_coco_like_dataset(out: str, num_images: int = 2000, seed: int = 0,
                           max_side: int = 640) -> dict:
    """Writes the images and the annotation file (last) under ``out``; returns the COCO dict."""
    if max_side < 4 * MIN_BOX_SIDE:
        raise ValueError(f'--max-side must be at least {4 * MIN_BOX_SIDE}, got {max_side}')
    if num_images < 1:
        raise ValueError(f'--num-images must be >= 1, got {num_images}')
    os.makedirs(os.path.join(out, 'train2017'), exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        height, width = image_size(rng, max_side)
        img, objects = render(rng, height, width, random_boxes(rng, height, width, max_side))
        file_name = f'{image_id:012d}.jpg'
        Image.fromarray(img).save(os.path.join(out, 'train2017', file_name), quality=90)
        images.append(dict(id=image_id, file_name=file_name, width=width, height=height))
        for obj in objects:
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id,
                category_id=COCO_CATEGORY_IDS[obj['label']], bbox=obj['bbox'],
                area=obj['area'], iscrowd=0))
    coco = dict(images=images, annotations=annotations, categories=coco_categories())
    os.makedirs(os.path.join(out, 'annotations'), exist_ok=True)
    path = os.path.join(out, 'annotations', 'instances_train2017.json')
    with open(path + '.tmp', 'w') as f:
        json.dump(coco, f)
    os.replace(path + '.tmp', path)  # a half-written dataset never looks complete
    return coco


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='data/coco_like', help='output directory')
    parser.add_argument('--num-images', type=int, default=2000, help='number of images')
    parser.add_argument('--seed', type=int, default=0, help='random seed (same seed, same files)')
    parser.add_argument('--max-side', type=int, default=640, help='longer image side in pixels')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    coco = make_coco_like_dataset(args.out, args.num_images, args.seed, args.max_side)
    print(f"wrote {len(coco['images'])} images with {len(coco['annotations'])} objects "
          f'(longer side {args.max_side}) to {args.out}')


if __name__ == '__main__':
    main()
