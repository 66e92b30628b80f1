"""Mosaic against boxes placed and mapped by hand, the image content against its boxes, masks,
empty images; SkipAfterMosaic; the MultiImageMixDataset path."""
import numpy as np
import pytest
import torch
from mmdet.datasets import MultiImageMixDataset
from mmdet.structures.bbox import HorizontalBoxes
from mmdet.structures.mask import BitmapMasks, PolygonMasks
from mmengine.dataset import BaseDataset

from detr_plugin.datasets.transforms import Mosaic, SkipAfterMosaic


def tile(height, width, boxes, labels, value):
    return dict(img=np.full((height, width, 3), value, dtype=np.uint8), img_shape=(height, width),
                gt_bboxes=HorizontalBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)),
                gt_bboxes_labels=np.array(labels, dtype=np.int64),
                gt_ignore_flags=np.array([label == 2 for label in labels], dtype=bool))


def four_tiles():
    """Shorter sides to 50: scales 0.5, 0.625, 0.5, 1.25; cells 100 x 100, canvas 200 x 200."""
    results = tile(100, 200, [[20, 10, 60, 50]], [0], value=10)  # -> 100 x 50, box [10, 5, 30, 25]
    results['mix_results'] = [
        tile(80, 80, [[0, 0, 80, 80]], [1], value=20),      # 50 x 50, [0, 0, 50, 50] + (100, 0)
        tile(200, 100, [[10, 20, 30, 60]], [2], value=30),  # 50 x 100, [5, 10, 15, 30] + (0, 100)
        tile(40, 60, [[6, 4, 30, 20]], [3], value=40)]      # 75 x 50, [7.5, 5, 37.5, 25] + (100, 100)
    return results


PLACED = [[10, 5, 30, 25], [100, 0, 150, 50], [5, 110, 15, 130], [107.5, 105, 137.5, 125]]


def mosaic(rotation=0.0, scale=1.0, translation=0.0, **kwargs):
    return Mosaic(img_scale=50, rotation_range=(rotation, rotation), scaling_range=(scale, scale),
                  translation_range=(translation, translation), **kwargs)


def test_placement_without_affine():
    out = mosaic()(four_tiles())
    np.testing.assert_allclose(out['gt_bboxes'].numpy(), PLACED)
    assert out['gt_bboxes_labels'].tolist() == [0, 1, 2, 3]
    assert out['gt_ignore_flags'].tolist() == [False, False, True, False]
    img = out['img']
    assert img.shape == (200, 200, 3) and out['img_shape'] == (200, 200) and out['is_mosaic']
    # each image at the top left of its cell, the rest of the cell at the fill value 0
    assert (img[:50, :100] == 10).all() and (img[50:100, :100] == 0).all()
    assert (img[:50, 100:150] == 20).all() and (img[:, 150:][:50] == 0).all()
    assert (img[100:200, :50] == 30).all() and (img[100:, 50:100] == 0).all()
    assert (img[100:150, 100:175] == 40).all() and (img[150:, 100:] == 0).all()


def test_scaling_about_the_centre_clips_and_drops():
    # p' = 1.5 (p - 100) + 100 = 1.5 p - 50
    out = mosaic(scale=1.5)(four_tiles())
    np.testing.assert_allclose(out['gt_bboxes'].numpy(),
                               [[100, 0, 175, 25],                  # [100, -50, 175, 25], clipped
                                [111.25, 107.5, 156.25, 137.5]])    # inside
    assert out['gt_bboxes_labels'].tolist() == [1, 3]                # 0 and 2 fell outside
    assert out['gt_ignore_flags'].tolist() == [False, False]


def test_rotation_by_90_degrees():
    # p' = R(90) (p - c) + c with c = (100, 100): (x, y) -> (200 - y, x)
    out = mosaic(rotation=90.0)(four_tiles())
    np.testing.assert_allclose(out['gt_bboxes'].numpy(),
                               [[175, 10, 195, 30], [150, 100, 200, 150], [70, 5, 90, 15],
                                [75, 107.5, 95, 137.5]], atol=1e-4)
    img = out['img']  # the first image (rows 0-50, columns 0-100) is now columns 150-200
    assert (img[:100, 150:200] == 10).all() and (img[100:150, 150:200] == 20).all()


def test_rotation_takes_the_box_around_the_corners():
    # 45 degrees about (100, 100), (x, y) -> (100 + (dx - dy) s, 100 + (dx + dy) s) with
    # s = sqrt(1/2) and (dx, dy) = (x - 100, y - 100). The corners of [100, 0, 150, 50] go to
    # (100 + 100 s, 100 - 100 s), (100 + 150 s, 100 - 50 s), (100 + 100 s, 100), (100 + 50 s,
    # 100 - 50 s); the first box's corners all get y < 0
    s = np.sqrt(0.5)
    out = mosaic(rotation=45.0)(four_tiles())
    assert out['gt_bboxes_labels'].tolist() == [1, 2, 3]
    np.testing.assert_allclose(out['gt_bboxes'].numpy()[0],
                               [100 + 50 * s, 100 - 100 * s, 200, 100], atol=1e-4)  # clipped


@pytest.mark.parametrize('seed', range(4))
def test_random_shift_moves_image_and_boxes_together(seed):
    np.random.seed(seed)
    results = tile(50, 50, [[10, 20, 30, 35]], [0], value=0)
    results['img'][20:35, 10:30] = 255  # the box, drawn into the image
    results['mix_results'] = [tile(50, 50, [[5, 5, 40, 40]], [1], value=0) for _ in range(3)]
    out = mosaic(translation=0.1)(results)
    box = out['gt_bboxes'].numpy()[0]
    ys, xs = np.nonzero(out['img'][..., 0] == 255)
    np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    shift = box - [10, 20, 30, 35]
    assert shift[0] == shift[2] == int(shift[0]) and abs(shift[0]) <= 10  # 0.1 x canvas width 100
    assert shift[1] == shift[3] == int(shift[1]) and abs(shift[1]) <= 10


def test_masks_follow_their_boxes():
    def with_masks(results, polygons):
        h, w = results['img'].shape[:2]
        boxes = results['gt_bboxes'].numpy().astype(int)
        if polygons:
            results['gt_masks'] = PolygonMasks(
                [[np.array([x1, y1, x2, y1, x2, y2, x1, y2], dtype=np.float64)]
                 for x1, y1, x2, y2 in boxes], h, w)
        else:
            bitmaps = np.zeros((len(boxes), h, w), dtype=np.uint8)
            for bitmap, (x1, y1, x2, y2) in zip(bitmaps, boxes):
                bitmap[y1:y2, x1:x2] = 1
            results['gt_masks'] = BitmapMasks(bitmaps, h, w)
        return results

    for polygons in (False, True):
        results = with_masks(tile(50, 50, [[10, 20, 30, 35]], [0], 0), polygons)
        results['mix_results'] = [with_masks(tile(50, 50, [[0, 30, 20, 45]], [1], 0), polygons),
                                  with_masks(tile(50, 50, [[0, 0, 0, 0]] * 0, [], 0), polygons),
                                  with_masks(tile(50, 50, [[5, 30, 40, 45]], [3], 0), polygons)]
        # scale 2 about (50, 50), then rotation by 90: (x, y) -> (150 - 2 y, 2 x - 50), clipped
        out = mosaic(rotation=90.0, scale=2.0)(results)
        boxes = out['gt_bboxes'].numpy()
        np.testing.assert_allclose(boxes, [[80, 0, 100, 10],      # [80, -30, 110, 10]
                                           [60, 50, 90, 90]])     # [50, 30, 70, 45] on the canvas
        assert out['gt_bboxes_labels'].tolist() == [0, 1]  # tile 3's box went to x in [-40, -10]
        masks = out['gt_masks']
        assert len(masks) == 2 and (masks.height, masks.width) == (100, 100)
        if polygons:
            np.testing.assert_allclose(masks.masks[0][0], [110, -30, 110, 10, 80, 10, 80, -30])
        else:
            np.testing.assert_allclose(masks.get_bboxes('hbox').numpy(), boxes)


def test_images_without_boxes():
    results = tile(60, 40, [], [], 5)
    results['mix_results'] = [tile(40, 40, [], [], 5) for _ in range(3)]
    out = Mosaic(img_scale=32, rotation_range=10)(results)
    assert out['gt_bboxes'].numpy().shape == (0, 4) and out['gt_bboxes_labels'].shape == (0,)
    assert out['gt_ignore_flags'].shape == (0,) and out['img'].shape[2] == 3


def test_probability_is_drawn_when_choosing_the_other_images():
    assert Mosaic(prob=0.0).get_indexes(range(5)) == []
    indexes = Mosaic(prob=1.0).get_indexes(range(5))
    assert len(indexes) == 3 and all(0 <= i < 5 for i in indexes)
    results = tile(20, 20, [[1, 1, 5, 5]], [0], 7)
    results['mix_results'] = []
    assert Mosaic()(results) is results and 'is_mosaic' not in results
    del results['mix_results']
    with pytest.raises(ValueError, match='MultiImageMixDataset'):
        Mosaic()(results)


def test_skip_after_mosaic():
    skip = SkipAfterMosaic([dict(type='Pad', size=(64, 64))])
    assert skip(tile(20, 20, [], [], 0))['img'].shape == (64, 64, 3)
    assert skip(dict(tile(20, 20, [], [], 0), is_mosaic=True))['img'].shape == (20, 20, 3)


class FourImages(BaseDataset):
    def __init__(self):
        super().__init__(serialize_data=False, pipeline=[], lazy_init=False)

    def load_data_list(self):
        return [dict(height=40 + 10 * i, width=50, value=i) for i in range(4)]

    def prepare_data(self, idx):
        info = self.get_data_info(idx)
        return tile(info['height'], info['width'], [[0, 0, 10, 10]], [info['value']],
                    info['value'])


def test_through_multi_image_mix_dataset():
    np.random.seed(0)
    dataset = MultiImageMixDataset(FourImages(), pipeline=[
        dict(type='Mosaic', img_scale=40, rotation_range=0, translation_range=(0, 0),
             scaling_range=(1, 1), prob=1.0),
        dict(type='SkipAfterMosaic', transforms=[dict(type='Pad', size=(999, 999))])])
    out = dataset[2]
    # the sample's own image (40 x 50 from 60 x 50) at the top left, four boxes, no padding
    assert out['gt_bboxes_labels'][0] == 2 and len(out['gt_bboxes_labels']) == 4
    assert (out['img'][:48, :40] == 2).all() and out['img'].shape[:2] != (999, 999)
    np.testing.assert_allclose(out['gt_bboxes'].numpy()[0], [0, 0, 8, 8])
