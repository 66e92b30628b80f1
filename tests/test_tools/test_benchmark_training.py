"""tools/misc/make_coco_like_dataset.py (valid COCO, COCO-like statistics, deterministic) and
tools/analysis/benchmark_training.py (runs on the CPU and prints its table)."""
import json
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

NUM_IMAGES, MAX_SIDE = 150, 64


@pytest.fixture(scope='module')
def gen(load_tool):
    return load_tool('tools/misc/make_coco_like_dataset.py')


@pytest.fixture(scope='module')
def dataset(gen, tmp_path_factory):
    """(root, COCO dict) of a small dataset with a longer side of 64 px."""
    root = tmp_path_factory.mktemp('coco_like')
    gen.main(['--out', str(root), '--num-images', str(NUM_IMAGES), '--seed', '5',
              '--max-side', str(MAX_SIDE)])
    ann = root / 'annotations' / 'instances_train2017.json'
    return root, json.loads(ann.read_text())


def test_pycocotools_loads_it_with_coco_categories(dataset):
    from pycocotools.coco import COCO
    root, _ = dataset
    coco = COCO(str(root / 'annotations' / 'instances_train2017.json'))
    assert len(coco.getImgIds()) == NUM_IMAGES
    cats = coco.loadCats(coco.getCatIds())
    assert len(cats) == 80
    # COCO's ids skip 12, 26, 29, 30, 45, 66, 68, 69, 71, 83
    by_name = {c['name']: c['id'] for c in cats}
    assert (by_name['person'], by_name['stop sign'], by_name['backpack'],
            by_name['toothbrush']) == (1, 13, 27, 90)


def test_mmdet_coco_dataset_keeps_every_annotation(dataset):
    from mmdet.datasets import CocoDataset
    root, coco = dataset
    ds = CocoDataset(data_root=str(root), ann_file='annotations/instances_train2017.json',
                     data_prefix=dict(img='train2017/'), filter_cfg=dict(filter_empty_gt=False),
                     pipeline=[], test_mode=False)
    assert len(ds) == NUM_IMAGES
    labels = [inst['bbox_label'] for i in range(len(ds))
              for inst in ds.get_data_info(i)['instances']]
    assert len(labels) == len(coco['annotations'])
    ids = [a['category_id'] for a in coco['annotations']]
    assert labels == [sorted(set(range(1, 91)) - {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}).index(i)
                      for i in ids]


def test_images_and_boxes(dataset):
    root, coco = dataset
    sizes = {}
    for im in coco['images']:
        with Image.open(root / 'train2017' / im['file_name']) as img:
            assert img.format == 'JPEG' and img.mode == 'RGB'
            assert img.size == (im['width'], im['height'])
        assert max(im['width'], im['height']) == MAX_SIDE
        sizes[im['id']] = (im['width'], im['height'])
    for a in coco['annotations']:
        x, y, w, h = a['bbox']
        width, height = sizes[a['image_id']]
        assert 0 <= x and 0 <= y and w >= 1 and h >= 1 and x + w <= width and y + h <= height
        # the demo shapes fill at least about half their box (the triangle)
        assert 0.4 * w * h <= a['area'] <= w * h


def test_size_distribution_is_coco_like(gen):
    """The sampler at COCO's 640 px against COCO train2017's statistics."""
    rng = np.random.default_rng(0)
    sizes = [gen.image_size(rng, 640) for _ in range(2000)]
    assert all(max(s) == 640 for s in sizes)
    landscape = np.mean([w > h for h, w in sizes])
    assert 0.65 < landscape < 0.85   # COCO: about 3 in 4
    boxes = [gen.random_boxes(rng, h, w, 640) for h, w in sizes]
    per_image = np.array([len(b) for b in boxes])
    assert 6.5 < per_image.mean() < 8 and per_image.max() == 20  # COCO: 7.3
    side = np.array([np.sqrt(b.w * b.h) for image in boxes for b in image])
    # COCO: 41% small (< 32 px), 24% large (> 96 px); the clipping to the image trims the tail
    assert np.mean(side < 32) == pytest.approx(0.41, abs=0.03)
    assert np.mean(side > 96) == pytest.approx(0.24, abs=0.03)
    assert all(0 <= b.x0 and b.x0 + b.w <= w and 0 <= b.y0 and b.y0 + b.h <= h
               for (h, w), image in zip(sizes, boxes) for b in image)


def test_same_seed_same_bytes(gen, dataset, tmp_path):
    root, coco = dataset
    gen.main(['--out', str(tmp_path), '--num-images', '4', '--seed', '5',
              '--max-side', str(MAX_SIDE)])
    again = json.loads((tmp_path / 'annotations' / 'instances_train2017.json').read_text())
    assert again['images'] == coco['images'][:4]
    assert again['annotations'] == [a for a in coco['annotations'] if a['image_id'] <= 4]
    for im in again['images']:
        name = im['file_name']
        assert (tmp_path / 'train2017' / name).read_bytes() == \
            (root / 'train2017' / name).read_bytes()


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared machine, threads waiting for a busy core slow each
    operator's parallel region by a time slice."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_benchmark_prints_its_table_on_cpu(load_tool, repo_root, dataset, capsys, one_thread):
    bench = load_tool('tools/analysis/benchmark_training.py')
    root, _ = dataset
    bench.main([str(repo_root / 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py'), '--data-root',
                str(root), '--batch', '2', '--workers', '0', '--iters', '2', '--step-iters', '1',
                '--warmup', '0', '--window', '1', '--rounds', '1', '--amp', 'none',
                '--device', 'cpu', '--variant', 'model.decoder.num_queries=20'])
    lines = capsys.readouterr().out.strip().splitlines()
    header, row, variant = lines[-4], lines[-2], lines[-1]
    assert variant.startswith('| ours, model.decoder.num_queries=20 |')
    for field in ('pipeline images/s', 'data wait ms/iter', 'epoch min (118,287 images)',
                  'model step images/s', 'model step ms', 'peak RSS MiB',
                  # the two iterations after the step that creates the optimizer state
                  'loss after 3 steps'):
        assert field in header
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[0] == 'ours'
    rate, wait, epoch, step_rate, step_ms, rss, loss = map(float, cells[1:])
    assert rate > 0 and wait >= 0 and rss > 100 and np.isfinite(loss) and loss > 0
    assert epoch == pytest.approx(118287 / rate / 60, rel=0.02)
    assert step_rate == pytest.approx(2 / step_ms * 1e3, rel=0.02)
    assert re.search(r'batch 2, AMP none, cpu', lines[-5])


def test_original_side_takes_the_families_coco_configs_only(load_tool, dataset, capsys):
    bench = load_tool('tools/analysis/benchmark_training.py')
    root, _ = dataset
    for config, version, name in [
            ('configs/rtdetrv2/rtdetrv2_r50vd_8xb2-72e_coco.py', 'v2', 'r50'),
            ('configs/rtdetrv2/rtdetrv2_r18vd_8xb2-120e_coco.py', 'v2', 'r18'),
            ('configs/dfine/dfine_hgnetv2-s_8xb4-132e_coco.py', 'dfine', 's'),
            ('configs/deim/deim_dfine_hgnetv2-n_8xb16-160e_coco.py', 'deim', 'n')]:
        family, found = bench.original_of(config)
        assert (family.version, found) == (version, name)
    assert (bench.original_of('configs/deim/deim_dfine_hgnetv2-n_8xb16-160e_coco.py')[0].package
            == 'engine')
    assert bench.original_of('configs/rtdetr/rtdetr_r18vd_1xb8-demo.py') is None
    assert bench.original_of('configs/dfine/dfine_r18vd_1xb8-demo.py') is None
    with pytest.raises(SystemExit):
        bench.parse_args(['configs/rtdetr/rtdetr_r18vd_1xb8-demo.py', '--data-root', str(root),
                          '--original-root', '/nonexistent'])
    assert '(RT-DETRv2, D-FINE, DEIM-D-FINE;' in capsys.readouterr().err


# the originals' model code and their loaders' COCO dataset
LOADER_IMPORTS = ('torchvision', 'faster_coco_eval', 'scipy', 'yaml', 'tensorboard')


@pytest.fixture
def original_modules(monkeypatch):
    """The originals' packages that the test imports (D-FINE's src.*, DEIM's engine.*) are
    dropped after it, and sys.path restored; benchmark_rtdetr, whose cached imports of them
    would outlive them, is imported afresh by the test and dropped after it."""
    monkeypatch.setattr(sys, 'path', list(sys.path))
    monkeypatch.delitem(sys.modules, 'benchmark_rtdetr', raising=False)
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split('.')[0] in ('src', 'engine', 'benchmark_rtdetr'):
            del sys.modules[name]


DFINE_N = 'configs/dfine/dfine_hgnetv2-n_8xb16-160e_coco.py'
DEIM_N = 'configs/deim/deim_dfine_hgnetv2-n_8xb16-160e_coco.py'


@pytest.mark.parametrize('config,version', [(DFINE_N, 'dfine'), (DEIM_N, 'deim')])
def test_benchmark_runs_beside_the_original_on_cpu(load_tool, repo_root, dataset, capsys,
                                                    one_thread, original_checkout,
                                                    original_modules, config, version):
    root = original_checkout(version, LOADER_IMPORTS)
    bench = load_tool('tools/analysis/benchmark_training.py')
    data_root, _ = dataset
    bench.main([str(repo_root / config), '--data-root', str(data_root), '--batch', '1',
                '--workers', '0', '--iters', '1', '--step-iters', '1', '--warmup', '0',
                '--window', '1', '--rounds', '1', '--amp', 'none', '--device', 'cpu',
                '--original-root', str(root)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert 'loss after 2 steps' in lines[-4]
    rows = {}
    for line in lines[-2:]:
        cells = [c.strip() for c in line.strip('|').split('|')]
        rows[cells[0]] = list(map(float, cells[1:]))
    assert set(rows) == {'ours', 'original'}
    for rate, wait, epoch, step_rate, step_ms, rss, loss in rows.values():
        assert rate > 0 and wait >= 0 and step_ms > 0 and rss > 100
        assert step_rate == pytest.approx(1 / step_ms * 1e3, abs=0.06)  # printed as .1f
        assert np.isfinite(loss) and loss > 0


@pytest.mark.parametrize('config,version', [(DFINE_N, 'dfine'), (DEIM_N, 'deim')])
def test_ours_starts_from_the_originals_weights_before_its_first_step(
        load_tool, repo_root, dataset, one_thread, original_checkout, original_modules, config,
        version):
    """The weights handed to our side are the original's initial ones (a second build of the
    original, converted), not those after the step that creates its optimizer state: on the
    original loader's first batch (COCO's category ids mapped to 0..79), denoising off, our loss
    is the original criterion's on the second build's output."""
    root = original_checkout(version, LOADER_IMPORTS)
    bench = load_tool('tools/analysis/benchmark_training.py')
    data_root, coco = dataset
    args = bench.parse_args([str(repo_root / config), '--data-root', str(data_root),
                             '--batch', '2', '--workers', '0', '--amp', 'none', '--device',
                             'cpu', '--original-root', str(root)])
    side, weights = bench.original_side(args)
    from benchmark_rtdetr import FAMILIES, original_model
    from mmdet.structures import DetDataSample
    from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
    from mmengine.structures import InstanceData

    from detr_plugin import converters
    from detr_plugin.registry import MODELS
    torch.manual_seed(args.seed)  # the original's initialisation, before the noise on it
    fresh = original_model(version, 'n', str(root), size=640)
    reference = getattr(converters, FAMILIES[version].converter)(fresh.model.state_dict())
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[k], reference[k]) for k in reference)

    images, targets = side.resident
    assert images.shape == (2, 3, 640, 640) and 0 <= images.min() and images.max() <= 1
    coco_ids = sorted(set(range(1, 91)) - {12, 26, 29, 30, 45, 66, 68, 69, 71, 83})
    for target in targets:
        annotated = {coco_ids.index(a['category_id']) for a in coco['annotations']
                     if a['image_id'] == int(target['image_id'])}
        assert set(target['labels'].tolist()) <= annotated
        assert ((0 < target['boxes']) & (target['boxes'] <= 1)).all()
    assert sum(len(t['labels']) for t in targets) > 0

    fresh.model.decoder.num_denoising = 0
    theirs = sum(fresh.criterion(fresh.model(images, targets=targets), targets).values())
    ours = MODELS.build(bench.benchmark_config(args).model)
    ours.load_state_dict(weights, strict=True)
    ours.train()
    ours.denoising = None
    samples = []
    for target in targets:
        sample = DetDataSample(metainfo=dict(img_shape=(640, 640), batch_input_shape=(640, 640)))
        sample.gt_instances = InstanceData(bboxes=bbox_cxcywh_to_xyxy(target['boxes']) * 640,
                                           labels=target['labels'])
        samples.append(sample)
    total, _ = ours.parse_losses(ours.loss(images, samples))
    assert float(total) == pytest.approx(float(theirs), rel=1e-5)


def test_our_step_runs_the_batch_multi_scale(load_tool, repo_root, dataset, one_thread):
    """BatchSyncRandomResize reads the iteration count that the runner would set."""
    bench = load_tool('tools/analysis/benchmark_training.py')
    root, _ = dataset
    args = bench.parse_args([str(repo_root / 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py'),
                             '--data-root', str(root), '--batch', '2', '--workers', '0',
                             '--amp', 'none', '--device', 'cpu'])
    cfg = bench.benchmark_config(args)
    cfg.model.data_preprocessor.batch_augments = [dict(
        type='BatchSyncRandomResize', random_size_range=(64, 96), size_divisor=32, interval=1)]
    side = bench.our_side(cfg, args, None)
    assert np.isfinite(side.step(side.resident))


def test_cfg_options_edit_our_config_and_set_cudnn_autotuner(load_tool, repo_root, dataset,
                                                             one_thread):
    """--cfg-options reaches our config; our steps run with env_cfg's cuDNN autotuner setting."""
    bench = load_tool('tools/analysis/benchmark_training.py')
    root, _ = dataset
    args = bench.parse_args([str(repo_root / 'configs/rtdetr/rtdetr_r18vd_1xb8-demo.py'),
                             '--data-root', str(root), '--batch', '2', '--workers', '0',
                             '--amp', 'none', '--device', 'cpu', '--cfg-options',
                             'env_cfg.cudnn_benchmark=True', 'model.decoder.num_queries=37'])
    cfg = bench.benchmark_config(args)
    assert cfg.model.decoder.num_queries == 37 and cfg.env_cfg.cudnn_benchmark is True
    saved = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        side = bench.our_side(cfg, args, None)
        assert np.isfinite(side.step(side.resident))
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = saved
