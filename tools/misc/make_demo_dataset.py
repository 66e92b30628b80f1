"""Writes a small synthetic COCO-format detection dataset: coloured shapes on a textured background.

    python tools/misc/make_demo_dataset.py [--out data/demo] [--seed 0] [--num-train 400]
                                           [--num-val 100] [--size 128]

Layout written under ``--out`` (mmdet's ``CocoDataset`` reads it unchanged)::

    train/000000.png ...            # (size, size, 3) uint8 RGB images
    val/000000.png ...
    annotations/instances_train.json, annotations/instances_val.json

Each image holds 1 to 6 objects of three classes (a filled square, circle and upward triangle,
each with its own hue), from 8 px up to half the image side, drawn in order so that later objects
occlude earlier ones. Boxes are the full (amodal) extent of each shape, in COCO ``[x, y, w, h]``
pixels; ``area`` is the number of the shape's pixels left visible; an object with less than
``MIN_VISIBLE`` of its pixels left visible is dropped from the annotations. A few training images
have no objects, so that the loss sees empty ground truth. Everything follows from ``--seed``:
the same arguments give byte-identical files. Distinct shapes and hues keep it learnable by a
small detector trained from scratch on a CPU in minutes.
"""
import argparse
import json
import os
from typing import List, NamedTuple, Tuple

import numpy as np
from PIL import Image

CLASSES = ('square', 'circle', 'triangle')
# Mean RGB colour of each class; drawn with per-object jitter and per-pixel noise.
CLASS_COLORS = ((220, 40, 40), (40, 190, 60), (50, 80, 230))
MIN_SIDE = 8                  # smallest object side in pixels
MIN_VISIBLE = 0.5             # objects with a smaller visible fraction of their pixels are dropped
EMPTY_TRAIN_FRACTION = 0.03   # share of training images with no object
MAX_OBJECTS = 6


class Shape(NamedTuple):
    """One object to draw: its class index and the square box it is inscribed in (pixels)."""
    label: int   # index into CLASSES
    x0: int      # left column of the box
    y0: int      # top row of the box
    side: int    # box side; the shape covers columns x0..x0+side-1 and rows y0..y0+side-1


def shape_mask(shape: Shape, size: int) -> np.ndarray:
    """Pixels covered by ``shape`` in a ``(size, size)`` image, as a bool mask.

    Every shape touches all four sides of its box, so the tight box of the mask is the box.
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    # Pixel-centre coordinates relative to the box, in [0, side).
    u, v = xs - shape.x0 + 0.5, ys - shape.y0 + 0.5
    s = float(shape.side)
    inside = (u > 0) & (u < s) & (v > 0) & (v < s)
    name = CLASSES[shape.label]
    if name == 'square':
        return inside
    if name == 'circle':
        # Radius reaches the outermost pixel centres so that the circle touches the box sides.
        r = s / 2
        return inside & ((u - r) ** 2 + (v - r) ** 2 <= (r - 0.5) ** 2 + 0.25 + 1e-9)
    if name == 'triangle':
        # Apex at the top centre, base on the bottom row: |u - s/2| <= (s/2) * v / s, widened by
        # half a pixel so that the apex row and the bottom corners are covered.
        return inside & (np.abs(u - s / 2) <= 0.5 * v + 0.5)
    raise ValueError(f'unknown class {name!r}')


def textured_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A greyish ``(size, size, 3)`` float image: smooth random blotches, stripes and pixel noise."""
    coarse = rng.uniform(70, 180, size=(5, 5, 1)) + rng.uniform(-12, 12, size=(5, 5, 3))
    # Bilinear upsampling of the 5x5 grid: weights (size, 5) of each output row over grid rows.
    weights = np.stack([np.interp(np.linspace(0, 4, size), np.arange(5), np.eye(5)[k])
                        for k in range(5)], 1)
    img = np.einsum('ik,klc,jl->ijc', weights, coarse, weights)               # (size, size, 3)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 20)
    ys, xs = np.mgrid[0:size, 0:size]
    stripes = 10 * np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period)
    return img + stripes[..., None] + rng.normal(0, 8, size=img.shape)


def random_shapes(rng: np.random.Generator, size: int, num: int) -> List[Shape]:
    """``num`` shapes with log-uniform sides in [MIN_SIDE, size // 2], fully inside the image."""
    shapes = []
    for _ in range(num):
        side = int(round(np.exp(rng.uniform(np.log(MIN_SIDE), np.log(size // 2)))))
        x0, y0 = rng.integers(0, size - side + 1, size=2)
        shapes.append(Shape(int(rng.integers(len(CLASSES))), int(x0), int(y0), side))
    return shapes


def render(rng: np.random.Generator, background: np.ndarray,
           shapes: List[Shape]) -> Tuple[np.ndarray, List[Tuple[Shape, int]]]:
    """Draws ``shapes`` in order over ``background`` (later on top).

    Returns the ``(size, size, 3)`` uint8 image and, for each shape that stays at least
    ``MIN_VISIBLE`` visible, ``(shape, visible_pixel_count)``.
    """
    size = background.shape[0]
    img = background.copy()
    owner = np.full((size, size), -1)          # index of the shape visible at each pixel
    full_areas = []
    for i, shape in enumerate(shapes):
        mask = shape_mask(shape, size)
        color = np.array(CLASS_COLORS[shape.label]) + rng.uniform(-25, 25, size=3)
        img[mask] = color + rng.normal(0, 10, size=(int(mask.sum()), 3))
        owner[mask] = i
        full_areas.append(int(mask.sum()))
    kept = []
    for i, shape in enumerate(shapes):
        visible = int((owner == i).sum())
        if visible >= MIN_VISIBLE * full_areas[i]:
            kept.append((shape, visible))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), kept


def write_split(out: str, split: str, num_images: int, size: int, rng: np.random.Generator,
                empty_fraction: float) -> dict:
    """Renders and saves ``num_images`` images of ``split``; returns its COCO annotation dict."""
    os.makedirs(os.path.join(out, split), exist_ok=True)
    num_empty = int(round(empty_fraction * num_images))
    empty_ids = set(rng.choice(num_images, size=num_empty, replace=False).tolist())
    images, annotations = [], []
    for idx in range(num_images):
        file_name = f'{idx:06d}.png'
        num = 0 if idx in empty_ids else int(rng.integers(1, MAX_OBJECTS + 1))
        img, kept = render(rng, textured_background(rng, size), random_shapes(rng, size, num))
        Image.fromarray(img).save(os.path.join(out, split, file_name))
        image_id = idx + 1
        images.append(dict(id=image_id, file_name=file_name, width=size, height=size))
        for shape, visible in kept:
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=shape.label + 1,
                bbox=[shape.x0, shape.y0, shape.side, shape.side], area=visible, iscrowd=0))
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(CLASSES)]
    return dict(images=images, annotations=annotations, categories=categories)


def make_demo_dataset(out: str, seed: int = 0, num_train: int = 400, num_val: int = 100,
                      size: int = 128) -> None:
    """Writes the train and val splits under ``out``; the annotation files are written last."""
    if size < 2 * MIN_SIDE:
        raise ValueError(f'size must be at least {2 * MIN_SIDE}, got {size}')
    if num_train < 0 or num_val < 0:
        raise ValueError(f'num_train and num_val must be >= 0, got {num_train} and {num_val}')
    # Independent streams per split: changing --num-train leaves the val split as it was.
    train_rng, val_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    splits = dict(train=write_split(out, 'train', num_train, size, train_rng, EMPTY_TRAIN_FRACTION),
                  val=write_split(out, 'val', num_val, size, val_rng, 0.0))
    os.makedirs(os.path.join(out, 'annotations'), exist_ok=True)
    for split, coco in splits.items():
        path = os.path.join(out, 'annotations', f'instances_{split}.json')
        with open(path + '.tmp', 'w') as f:
            json.dump(coco, f)
        os.replace(path + '.tmp', path)   # a half-written dataset never looks complete


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Write the synthetic COCO-format demo dataset')
    parser.add_argument('--out', default='data/demo', help='output directory')
    parser.add_argument('--seed', type=int, default=0, help='random seed (same seed, same files)')
    parser.add_argument('--num-train', type=int, default=400, help='number of training images')
    parser.add_argument('--num-val', type=int, default=100, help='number of validation images')
    parser.add_argument('--size', type=int, default=128, help='image side in pixels')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    make_demo_dataset(args.out, args.seed, args.num_train, args.num_val, args.size)
    print(f'wrote {args.num_train} train and {args.num_val} val images of {args.size}x{args.size} '
          f'with classes {", ".join(CLASSES)} to {args.out}')


if __name__ == '__main__':
    main()
