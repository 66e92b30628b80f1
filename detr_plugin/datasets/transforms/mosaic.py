"""DEIM's Mosaic: four images on a 2 x 2 canvas under one random affine (Dense O2O)."""
import math
from typing import List, NamedTuple, Sequence, Tuple, Union

import cv2
import mmcv
import numpy as np
from mmcv.transforms import BaseTransform, Compose
from mmdet.structures.bbox import BaseBoxes
from mmdet.structures.mask import BitmapMasks, PolygonMasks

from detr_plugin.registry import TRANSFORMS

MOSAIC_KEY = 'is_mosaic'  # set on the samples Mosaic made, read by SkipAfterMosaic


class Affine(NamedTuple):
    """p' = scale * R(angle) (p - centre) + centre + (tx, ty), in continuous pixel coordinates
    (pixel i covers [i, i + 1)), R(a) = [[cos a, -sin a], [sin a, cos a]] in degrees."""
    angle: float
    tx: int
    ty: int
    scale: float

    def matrix(self, width: int, height: int) -> np.ndarray:
        """(2, 3) forward matrix about the canvas centre (width / 2, height / 2)."""
        cos, sin = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        linear = self.scale * np.array([[cos, -sin], [sin, cos]])
        centre = np.array([width / 2, height / 2])
        shift = centre - linear @ centre + np.array([self.tx, self.ty])
        return np.concatenate([linear, shift[:, None]], axis=1)


@TRANSFORMS.register_module()
class Mosaic(BaseTransform):
    """DEIM's Mosaic (its ``use_cache=False`` mode, the one its configs use).

    The sample and three images drawn uniformly from the dataset (with replacement) are each
    resized so that their shorter side is ``img_scale`` (aspect ratio kept), then pasted at the
    top-left corners of the four cells of a canvas of twice the largest width and height: the
    sample top left, the others top right, bottom left, bottom right. One random affine of the
    whole canvas follows (torchvision's RandomAffine as DEIM draws it): an angle in
    ``rotation_range``, a shift of ``round(U(-t * size, t * size))`` pixels per axis with ``t``
    from ``translation_range``, a scale in ``scaling_range``, about the canvas centre (the image
    warped with the same mapping, nearest-neighbour by default); the output keeps
    the canvas size. A box becomes the axis-aligned box of its four mapped corners, clipped to the
    canvas; boxes left empty (outside) are dropped with their labels, ignore flags and masks.

    Needs mmdet's ``MultiImageMixDataset``: ``get_indexes`` draws the probability too, so a sample
    left alone loads no other image. The output size varies with the images; the pipeline's
    Resize follows, as in DEIM.

    Required keys: img, gt_bboxes, gt_bboxes_labels, mix_results (gt_ignore_flags, gt_masks if
    present). Modified keys: img, img_shape, gt_bboxes, gt_bboxes_labels, gt_ignore_flags,
    gt_masks. Added key: is_mosaic.

    Args:
        img_scale: shorter side of each image on the canvas (DEIM's ``output_size``).
        rotation_range: degrees, ``r`` for (-r, r) or a (min, max) pair.
        translation_range: maximum shift over canvas width and height.
        scaling_range: (min, max) scale.
        prob: probability of a mosaic (DEIM's ``probability``).
        fill: value of the canvas and of the area the affine uncovers (DEIM's canvas is always
            0 and its ``fill_value`` only the affine's; its configs set 0).
        interpolation: of the affine warp ('nearest' as torchvision's RandomAffine).
    """

    def __init__(self,
                 img_scale: int = 320,
                 rotation_range: Union[float, Tuple[float, float]] = 0.0,
                 translation_range: Tuple[float, float] = (0.1, 0.1),
                 scaling_range: Tuple[float, float] = (0.5, 1.5),
                 prob: float = 1.0,
                 fill: int = 0,
                 interpolation: str = 'nearest') -> None:
        if not 0 <= prob <= 1:
            raise ValueError(f'Mosaic: prob must be in [0, 1], got {prob}')
        if isinstance(rotation_range, (int, float)):
            rotation_range = (-abs(rotation_range), abs(rotation_range))
        self.img_scale = img_scale
        self.rotation_range = tuple(rotation_range)
        self.translation_range = tuple(translation_range)
        self.scaling_range = tuple(scaling_range)
        self.prob = prob
        self.fill = fill
        self.interpolation = interpolation

    def get_indexes(self, dataset) -> List[int]:
        """Three random dataset indices, or none when this sample is not to be a mosaic."""
        if np.random.rand() >= self.prob:
            return []
        return [int(i) for i in np.random.randint(len(dataset), size=3)]

    def transform(self, results: dict) -> dict:
        if 'mix_results' not in results:
            raise ValueError('Mosaic needs the other images: put it in the pipeline of a '
                             'MultiImageMixDataset (train_dataloader.dataset)')
        if not results['mix_results']:
            return results
        tiles = [self.resize(tile) for tile in [results] + results['mix_results']]
        canvas = self.paste(tiles)
        height, width = canvas['img'].shape[:2]
        matrix = self.random_affine(width, height).matrix(width, height)
        box_type = type(results['gt_bboxes'])
        results.update(self.warp(canvas, matrix))
        if issubclass(box_type, BaseBoxes):
            results['gt_bboxes'] = box_type(results['gt_bboxes'])
        results[MOSAIC_KEY] = True
        return results

    def random_affine(self, width: int, height: int) -> Affine:
        max_dx, max_dy = self.translation_range[0] * width, self.translation_range[1] * height
        return Affine(angle=float(np.random.uniform(*self.rotation_range)),
                      tx=int(round(np.random.uniform(-max_dx, max_dx))),
                      ty=int(round(np.random.uniform(-max_dy, max_dy))),
                      scale=float(np.random.uniform(*self.scaling_range)))

    def resize(self, tile: dict) -> dict:
        """The tile with its shorter side at ``img_scale`` (torchvision's Resize(int) sizes)."""
        height, width = tile['img'].shape[:2]
        short, long = min(height, width), max(height, width)
        new_long = int(self.img_scale * long / short)
        new_w, new_h = (self.img_scale, new_long) if width <= height else (new_long, self.img_scale)
        sx, sy = new_w / width, new_h / height
        # Pillow's bilinear (antialiased when shrinking), as torchvision resizes DEIM's PIL images
        img = mmcv.imresize(tile['img'], (new_w, new_h), interpolation='bilinear',
                            backend='pillow')
        out = dict(img=img,
                   boxes=_boxes(tile) * np.array([sx, sy, sx, sy], dtype=np.float32),
                   labels=tile['gt_bboxes_labels'], ignore=tile.get('gt_ignore_flags'))
        if 'gt_masks' in tile:
            out['masks'] = tile['gt_masks'].resize((new_h, new_w))
        return out

    def paste(self, tiles: Sequence[dict]) -> dict:
        """The four tiles at the top-left corners of the cells of a 2 x 2 canvas."""
        cell_h = max(t['img'].shape[0] for t in tiles)
        cell_w = max(t['img'].shape[1] for t in tiles)
        offsets = [(0, 0), (cell_w, 0), (0, cell_h), (cell_w, cell_h)]  # (x, y)
        img = np.full((2 * cell_h, 2 * cell_w) + tiles[0]['img'].shape[2:], self.fill,
                      dtype=tiles[0]['img'].dtype)
        for tile, (x, y) in zip(tiles, offsets):
            h, w = tile['img'].shape[:2]
            img[y:y + h, x:x + w] = tile['img']
        canvas = dict(
            img=img,
            boxes=np.concatenate([t['boxes'] + np.array([x, y, x, y], dtype=np.float32)
                                  for t, (x, y) in zip(tiles, offsets)]),
            labels=np.concatenate([t['labels'] for t in tiles]))
        if all(t['ignore'] is not None for t in tiles):
            canvas['ignore'] = np.concatenate([t['ignore'] for t in tiles])
        if all('masks' in t for t in tiles):
            canvas['masks'] = _paste_masks([t['masks'] for t in tiles], offsets, img.shape[:2])
        return canvas

    def warp(self, canvas: dict, matrix: np.ndarray) -> dict:
        """The canvas under ``matrix`` (2, 3), as the results' keys."""
        height, width = canvas['img'].shape[:2]
        flags = cv2.INTER_NEAREST if self.interpolation == 'nearest' else cv2.INTER_LINEAR
        img = cv2.warpAffine(canvas['img'], _pixel_centre_matrix(matrix), (width, height),
                             flags=flags, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(self.fill,) * 3)
        if img.ndim < canvas['img'].ndim:  # cv2 drops a trailing axis of one channel
            img = img[..., None]
        boxes = _map_boxes(canvas['boxes'], matrix)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out = dict(img=img, img_shape=img.shape[:2], gt_bboxes_labels=canvas['labels'][keep],
                   gt_bboxes=boxes[keep])
        if 'ignore' in canvas:
            out['gt_ignore_flags'] = canvas['ignore'][keep]
        if 'masks' in canvas:
            out['gt_masks'] = _warp_masks(canvas['masks'], matrix, (height, width))[
                np.flatnonzero(keep)]
        return out

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(img_scale={self.img_scale}, '
                f'rotation_range={self.rotation_range}, '
                f'translation_range={self.translation_range}, '
                f'scaling_range={self.scaling_range}, prob={self.prob}, fill={self.fill})')


@TRANSFORMS.register_module()
class SkipAfterMosaic(BaseTransform):
    """Runs ``transforms`` on the samples Mosaic left alone: in DEIM, zoom-out and IoU crop never
    follow a mosaic.

    Args:
        transforms: the transforms (configs) to run on a sample that is not a mosaic.
    """

    def __init__(self, transforms: Sequence[dict]) -> None:
        self.transforms = Compose(transforms)

    def transform(self, results: dict) -> dict:
        if results.get(MOSAIC_KEY, False):
            return results
        return self.transforms(results)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.transforms.transforms})'


def _boxes(results: dict) -> np.ndarray:
    """(n, 4) float32 xyxy boxes of the results."""
    boxes = results['gt_bboxes']
    boxes = boxes.numpy() if isinstance(boxes, BaseBoxes) else np.asarray(boxes)
    return boxes.reshape(-1, 4).astype(np.float32)


def _map_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(n, 4) xyxy: the axis-aligned boxes around the four mapped corners of each box."""
    corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2)
    mapped = corners @ matrix[:, :2].T + matrix[:, 2]
    return np.concatenate([mapped.min(1), mapped.max(1)], axis=1).astype(np.float32)


def _pixel_centre_matrix(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` for OpenCV's coordinates, where pixel i is centred on i rather than i + 0.5."""
    half = np.array([0.5, 0.5])
    shift = matrix[:, :2] @ half + matrix[:, 2] - half
    return np.concatenate([matrix[:, :2], shift[:, None]], axis=1)


def _paste_masks(masks, offsets, shape):
    """The tiles' instance masks placed on the canvas of ``shape`` (height, width)."""
    height, width = shape
    if all(isinstance(m, BitmapMasks) for m in masks):
        canvas = np.zeros((sum(len(m) for m in masks), height, width), dtype=np.uint8)
        start = 0
        for m, (x, y) in zip(masks, offsets):
            canvas[start:start + len(m), y:y + m.height, x:x + m.width] = m.masks
            start += len(m)
        return BitmapMasks(canvas, height, width)
    if all(isinstance(m, PolygonMasks) for m in masks):
        shifted = [[poly + np.tile([x, y], len(poly) // 2) for poly in instance]
                   for m, (x, y) in zip(masks, offsets) for instance in m.masks]
        return PolygonMasks(shifted, height, width)
    raise TypeError('Mosaic: gt_masks must be all BitmapMasks or all PolygonMasks')


def _warp_masks(masks, matrix, shape):
    height, width = shape
    if isinstance(masks, BitmapMasks):
        centred = _pixel_centre_matrix(matrix)
        warped = [cv2.warpAffine(m, centred, (width, height), flags=cv2.INTER_NEAREST,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                  for m in masks.masks]
        return BitmapMasks(np.stack(warped) if warped else masks.masks, height, width)
    mapped = [[(poly.reshape(-1, 2) @ matrix[:, :2].T + matrix[:, 2]).reshape(-1)
               for poly in instance] for instance in masks.masks]
    return PolygonMasks(mapped, height, width)
