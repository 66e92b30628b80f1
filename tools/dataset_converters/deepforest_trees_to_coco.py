"""Writes the tree-crown photos that ship in the ``deepforest`` package as a COCO-format dataset.

    pip install --no-deps deepforest==2.1.0      # its data files are all this needs (20 MB wheel)
    python tools/dataset_converters/deepforest_trees_to_coco.py [--out data/deepforest_trees]
                                                                [--src DIR] [--tile 320]

The source: the four annotated RGB airborne photographs in ``deepforest/data`` (NEON orthophotos,
10 cm per pixel; Pascal VOC boxes around individual tree crowns, drawn by the DeepForest authors;
MIT licence with the package). ``--src`` reads the same files from another folder; otherwise the
installed package is found without importing it (its own dependencies are not needed).

=========================================  ===========  =========  =====  ======
photograph                                 pixels       grid       split  crowns
=========================================  ===========  =========  =====  ======
2019_YELL_2_528000_4978000_image_crop2     2299 x 2472  7 x 8      train  574
OSBS_029                                   400 x 400    1 x 1      train  61
SOAP_061                                   400 x 400    1 x 1      train  37
2019_YELL_2_541000_4977000_image_crop      1249 x 1035  4 x 3      val    279
=========================================  ===========  =========  =====  ======

Split: the validation set is one whole photograph, a different part of Yellowstone from the
training crop, so no crown and no pixel of it is seen in training. Tiling (grid above, with
``--tile 320``): each photograph is cut into ``n = max(1, round(side / tile))`` equal cells per
axis, cell edges at ``round(k * side / n)`` pixels, so cells do not overlap and cover the whole
photograph. A crown goes to the cell that holds its box centre, clipped to that cell, and is
dropped when the clipped box keeps less than half of its area (one val crown at 320 px tiles).
All crowns are one class, ``tree`` (SOAP_061's ``Alive``/``Dead`` labels included). Boxes are
continuous pixel coordinates, as in the source files. Tiles are saved as PNG, named
``<photograph>_r<row>_c<col>.png``. The output is the same on every run.

Layout written under ``--out`` (mmdet's ``CocoDataset`` reads it unchanged)::

    train/*.png, val/*.png
    annotations/instances_train.json, annotations/instances_val.json
"""
import argparse
import importlib.metadata
import importlib.util
import json
import os
import sys
import xml.etree.ElementTree as ET
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image

CLASSES = ('tree',)
PACKAGE = 'deepforest'
INSTALL_HINT = 'pip install --no-deps deepforest==2.1.0'
# annotation file in deepforest/data -> split; the image is the file its <filename> names
SOURCES = (
    ('2019_YELL_2_528000_4978000_image_crop2.xml', 'train'),
    ('OSBS_029.xml', 'train'),
    ('SOAP_061.xml', 'train'),
    ('2019_YELL_2_541000_4977000_image_crop.xml', 'val'),
)
MIN_KEPT_AREA = 0.5   # share of a crown's box area that must lie in its cell


class Photo(NamedTuple):
    """One annotated photograph of the source."""
    name: str           # file stem, e.g. 'OSBS_029'
    image: np.ndarray   # (H, W, 3) uint8 RGB
    boxes: np.ndarray   # (N, 4) float64 x1, y1, x2, y2 in pixels


class Tile(NamedTuple):
    """One cell of a photograph's grid and the crowns assigned to it."""
    file_name: str
    image: np.ndarray   # (h, w, 3) uint8 RGB
    boxes: np.ndarray   # (M, 4) float64 x1, y1, x2, y2 in tile pixels


def fail(message: str) -> None:
    sys.exit(f'deepforest_trees_to_coco.py: {message}')


def find_source_dir() -> str:
    """``deepforest/data`` of the installed package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        fail(f'the {PACKAGE} package is not installed ({INSTALL_HINT}), or pass --src DIR')
    return os.path.join(list(spec.submodule_search_locations)[0], 'data')


def read_photo(src: str, xml_name: str) -> Photo:
    """The photograph and the boxes of one Pascal VOC file of ``src``."""
    xml_path = os.path.join(src, xml_name)
    if not os.path.isfile(xml_path):
        fail(f'{xml_path} is missing (deepforest 2.1.0 ships it; {INSTALL_HINT})')
    root = ET.parse(xml_path).getroot()
    image_path = os.path.join(src, root.findtext('filename'))
    if not os.path.isfile(image_path):
        fail(f'{image_path} is missing (named by {xml_name})')
    image = np.asarray(Image.open(image_path).convert('RGB'))
    boxes = [[float(obj.findtext(f'bndbox/{k}')) for k in ('xmin', 'ymin', 'xmax', 'ymax')]
             for obj in root.iter('object')]
    return Photo(os.path.splitext(xml_name)[0], image, np.array(boxes).reshape(-1, 4))


def cell_edges(side: int, tile: int) -> List[int]:
    """Edges of ``max(1, round(side / tile))`` equal cells covering ``[0, side]``."""
    n = max(1, round(side / tile))
    return [round(k * side / n) for k in range(n + 1)]


def tile_photo(photo: Photo, tile: int) -> List[Tile]:
    """The photograph's grid cells, row by row, each with the crowns centred in it."""
    height, width = photo.image.shape[:2]
    ys, xs = cell_edges(height, tile), cell_edges(width, tile)
    x1, y1, x2, y2 = photo.boxes.T
    # cell index of each box centre; cells are half-open [edge_k, edge_k+1), the last one closed
    rows = np.clip(np.searchsorted(ys, (y1 + y2) / 2, side='right') - 1, 0, len(ys) - 2)
    cols = np.clip(np.searchsorted(xs, (x1 + x2) / 2, side='right') - 1, 0, len(xs) - 2)
    tiles = []
    for row, (top, bottom) in enumerate(zip(ys[:-1], ys[1:])):
        for col, (left, right) in enumerate(zip(xs[:-1], xs[1:])):
            ours = photo.boxes[(rows == row) & (cols == col)]
            clipped = np.stack([np.clip(ours[:, 0], left, right), np.clip(ours[:, 1], top, bottom),
                                np.clip(ours[:, 2], left, right), np.clip(ours[:, 3], top, bottom)],
                               1)
            kept_area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
            full_area = (ours[:, 2] - ours[:, 0]) * (ours[:, 3] - ours[:, 1])
            keep = kept_area >= MIN_KEPT_AREA * full_area
            tiles.append(Tile(f'{photo.name}_r{row}_c{col}.png',
                              photo.image[top:bottom, left:right],
                              clipped[keep] - np.array([left, top, left, top])))
    return tiles


def write_split(out: str, split: str, tiles: List[Tile]) -> dict:
    """Saves the tiles of ``split``; returns its COCO annotation dict."""
    os.makedirs(os.path.join(out, split), exist_ok=True)
    images, annotations = [], []
    for image_id, tile in enumerate(tiles, start=1):
        Image.fromarray(tile.image).save(os.path.join(out, split, tile.file_name))
        height, width = tile.image.shape[:2]
        images.append(dict(id=image_id, file_name=tile.file_name, width=width, height=height))
        for x1, y1, x2, y2 in tile.boxes.tolist():
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=1,
                                    bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1),
                                    iscrowd=0))
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(CLASSES)]
    return dict(images=images, annotations=annotations, categories=categories)


def convert(out: str, src: Optional[str] = None, tile: int = 320) -> Dict[str, Tuple[int, int]]:
    """Writes both splits under ``out``; returns ``{split: (num_images, num_boxes)}``."""
    if tile < 32:
        fail(f'--tile must be at least 32, got {tile}')
    src = src or find_source_dir()
    tiles = {'train': [], 'val': []}
    for xml_name, split in SOURCES:
        tiles[split] += tile_photo(read_photo(src, xml_name), tile)
    cocos = {split: write_split(out, split, split_tiles) for split, split_tiles in tiles.items()}
    os.makedirs(os.path.join(out, 'annotations'), exist_ok=True)
    for split, coco in cocos.items():
        path = os.path.join(out, 'annotations', f'instances_{split}.json')
        with open(path + '.tmp', 'w') as f:
            json.dump(coco, f)
        os.replace(path + '.tmp', path)   # a half-written dataset never looks complete
    return {split: (len(coco['images']), len(coco['annotations'])) for split, coco in cocos.items()}


def source_name(src: Optional[str]) -> str:
    """What the photographs were read from: ``--src`` or the installed package and its version."""
    if src:
        return src
    try:
        return f'{PACKAGE} {importlib.metadata.version(PACKAGE)}'
    except importlib.metadata.PackageNotFoundError:
        return PACKAGE


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write deepforest's tree-crown photographs as a COCO-format train/val split")
    parser.add_argument('--out', default='data/deepforest_trees', help='output directory')
    parser.add_argument('--src', help="folder with deepforest's data files (default: the "
                                      'installed package)')
    parser.add_argument('--tile', type=int, default=320, help='target tile side in pixels')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    counts = convert(args.out, args.src, args.tile)
    for split, (num_images, num_boxes) in counts.items():
        print(f'{split}: {num_images} images, {num_boxes} tree boxes')
    print(f'wrote {args.out} from {source_name(args.src)}')


if __name__ == '__main__':
    main()
