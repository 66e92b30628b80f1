"""tools/misc/make_demo_dataset.py: shapes, occlusion, files, determinism, and mmdet reading it."""
import json

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope='module')
def gen(load_tool):
    return load_tool('tools/misc/make_demo_dataset.py')


@pytest.fixture(scope='module')
def dataset(gen, tmp_path_factory):
    """A small dataset at the default image size: (root, train coco dict, val coco dict)."""
    root = tmp_path_factory.mktemp('demo')
    gen.main(['--out', str(root), '--seed', '3', '--num-train', '60', '--num-val', '10'])
    load = lambda split: json.loads((root / 'annotations' / f'instances_{split}.json').read_text())
    return root, load('train'), load('val')


def tight_box(mask):
    """(x, y, w, h) of the True pixels, by looping over every pixel."""
    xs, ys = [], []
    for y in range(mask.shape[0]):
        for x in range(mask.shape[1]):
            if mask[y, x]:
                xs.append(x)
                ys.append(y)
    return min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1


@pytest.mark.parametrize('label', [0, 1, 2])
@pytest.mark.parametrize('x0, y0, side', [(0, 0, 8), (3, 5, 9), (20, 11, 15), (1, 30, 34)])
def test_shape_fills_its_box(gen, label, x0, y0, side):
    mask = gen.shape_mask(gen.Shape(label, x0, y0, side), 64)
    assert tight_box(mask) == (x0, y0, side, side)


def test_shape_areas_match_geometry(gen):
    side = 40
    area = {name: gen.shape_mask(gen.Shape(label, 4, 4, side), 64).sum()
            for label, name in enumerate(gen.CLASSES)}
    assert area['square'] == side * side
    # A disc through the outermost pixel centres, half a pixel inside the box on each side.
    assert abs(area['circle'] / (np.pi * (side / 2 - 0.5) ** 2) - 1) < 0.02
    # Half the square; the rasterised edges add about one pixel per row (40 of 800).
    assert abs(area['triangle'] / (side * side / 2) - 1) < 0.06


def test_occluded_objects_are_dropped(gen):
    rng = np.random.default_rng(0)
    background = np.zeros((48, 48, 3))
    square = gen.CLASSES.index('square')
    bottom = gen.Shape(square, 0, 0, 20)   # 400 pixels
    # A square on top covering columns 10..19 of `bottom` leaves it exactly half (200 px) visible.
    _, kept = gen.render(rng, background, [bottom, gen.Shape(square, 10, 0, 20)])
    assert [(s, v) for s, v in kept] == [(bottom, 200), (gen.Shape(square, 10, 0, 20), 400)]
    # One column more (columns 9..19): 180 px visible, under half: dropped.
    _, kept = gen.render(rng, background, [bottom, gen.Shape(square, 9, 0, 20)])
    assert [s for s, _ in kept] == [gen.Shape(square, 9, 0, 20)]
    # A small square on a big one hides 100 of its 900 pixels: both are kept.
    _, kept = gen.render(rng, background, [gen.Shape(square, 0, 0, 30), gen.Shape(square, 5, 5, 10)])
    assert [v for _, v in kept] == [800, 100]


def test_annotations_are_consistent(dataset):
    root, train, val = dataset
    for split, coco in (('train', train), ('val', val)):
        assert [c['name'] for c in coco['categories']] == ['square', 'circle', 'triangle']
        assert [c['id'] for c in coco['categories']] == [1, 2, 3]
        images = {im['id']: im for im in coco['images']}
        assert len({a['id'] for a in coco['annotations']}) == len(coco['annotations'])
        for im in coco['images']:
            with Image.open(root / split / im['file_name']) as img:
                assert img.mode == 'RGB' and img.size == (im['width'], im['height']) == (128, 128)
        for a in coco['annotations']:
            x, y, w, h = a['bbox']
            im = images[a['image_id']]
            assert 0 <= x and 0 <= y and x + w <= im['width'] and y + h <= im['height']
            assert 8 <= w == h <= 64
            assert a['category_id'] in (1, 2, 3) and a['iscrowd'] == 0
            assert 0 < a['area'] <= w * h


def test_objects_per_image_and_sizes(dataset):
    _, train, val = dataset
    for coco, min_objects in ((train, 0), (val, 1)):
        counts = np.bincount([a['image_id'] for a in coco['annotations']],
                             minlength=len(coco['images']) + 1)[1:]
        assert min_objects <= counts.min() and counts.max() <= 6
    train_counts = np.bincount([a['image_id'] for a in train['annotations']], minlength=61)[1:]
    assert (train_counts == 0).sum() >= 1, 'a few training images must have no object'
    sides = [a['bbox'][2] for a in train['annotations']]
    assert min(sides) <= 12 and max(sides) >= 48, 'small and large objects'
    assert set(a['category_id'] for a in train['annotations']) == {1, 2, 3}


def test_pixels_at_top_object_have_its_class_colour(dataset):
    """The last annotation of an image is drawn on top: its centre shows its class's hue."""
    root, _, val = dataset
    dominant_channel = {1: 0, 2: 1, 3: 2}  # square red, circle green, triangle blue
    for im in val['images']:
        top = [a for a in val['annotations'] if a['image_id'] == im['id']][-1]
        x, y, w, h = top['bbox']
        cx, cy = x + w // 2, y + h // 2
        pixels = np.asarray(Image.open(root / 'val' / im['file_name']), dtype=float)
        patch_mean = pixels[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).mean(0)
        assert patch_mean.argmax() == dominant_channel[top['category_id']]


def test_same_seed_same_bytes_and_val_independent_of_train(gen, tmp_path):
    runs = {}
    for name, seed, num_train in (('a', 5, 4), ('b', 5, 4), ('c', 6, 4), ('d', 5, 7)):
        gen.make_demo_dataset(str(tmp_path / name), seed=seed, num_train=num_train, num_val=3,
                              size=32)
        runs[name] = {p.relative_to(tmp_path / name): p.read_bytes()
                      for p in sorted((tmp_path / name).rglob('*')) if p.is_file()}
    assert runs['a'] == runs['b']
    assert runs['a'] != runs['c']
    val_files = lambda run: {k: v for k, v in run.items() if 'val' in str(k)}
    assert val_files(runs['a']) == val_files(runs['d'])


def test_rejects_bad_arguments(gen, tmp_path):
    with pytest.raises(ValueError, match='size'):
        gen.make_demo_dataset(str(tmp_path), size=10)
    with pytest.raises(ValueError, match='num_train'):
        gen.make_demo_dataset(str(tmp_path), num_train=-1)


def test_mmdet_coco_dataset_reads_it_with_the_demo_config(dataset, repo_root):
    """The val pipeline of configs/_base_/datasets/demo_detection.py gives the json's boxes."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from detr_plugin.registry import DATASETS
    root, train, val = dataset
    cfg = Config.fromfile(str(repo_root / 'configs/_base_/datasets/demo_detection.py'))
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        val_ds = DATASETS.build(dict(cfg.val_dataloader.dataset, data_root=str(root)))
        train_ds = DATASETS.build(dict(cfg.train_dataloader.dataset, data_root=str(root)))
    assert len(train_ds) == len(train['images']), 'images without objects are kept'
    assert val_ds.metainfo['classes'] == ('square', 'circle', 'triangle')
    for index in (0, len(val_ds) - 1):
        item = val_ds[index]
        sample = item['data_samples']
        assert tuple(item['inputs'].shape) == (3, 128, 128)
        anns = [a for a in val['annotations'] if a['image_id'] == sample.img_id]
        expected = [[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)]
        assert sample.gt_instances.bboxes.tensor.tolist() == expected
        assert sample.gt_instances.labels.tolist() == [a['category_id'] - 1 for a in anns]
