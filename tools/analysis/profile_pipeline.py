"""Where one loader worker's time goes: each transform of a config's training pipeline, timed per
image in a single process.

    python tools/misc/make_coco_like_dataset.py --out data/coco_like --num-images 200
    python tools/analysis/profile_pipeline.py configs/rtdetrv2/rtdetrv2_r18vd_8xb2-120e_coco.py \\
        --data-root data/coco_like --images 200

The config's ``train_dataloader.dataset`` reads ``--data-root`` (its data_root, ann_file and
data_prefix overridden as tools/analysis/benchmark_training.py does). Images are taken in order,
``--images`` of them (cycling through the dataset), with numpy's, Python's and torch's random
streams seeded from ``--seed``; ``--cfg-options`` edits the config (e.g. mmdet's ``Expand`` and
``RandomFlip`` in place of ours: ``train_dataloader.dataset.pipeline.3.type=Expand
train_dataloader.dataset.pipeline.6.type=RandomFlip``). The process runs as a loader worker
does: one torch thread and OpenCV's thread count from the config's
``env_cfg.mp_cfg.opencv_num_threads`` (``--cv2-threads`` overrides it).

Each row is one transform of the pipeline, in order: its median and mean ms per image over the
images it ran on, and its share of the summed time. A transform that returns None (an image left
without boxes) ends that image there; the dataset would then load another one, and that work is
counted in the rows like any other. For a ``MultiImageMixDataset`` (Mosaic) the rows are the inner
dataset's loading transforms, the other images a mixing transform asks for (loaded as the
wrapper does, ``<name> images``), the wrapper's copy of the results before each transform
(``copy``) and its transforms. The last line is images/s of the whole: the images over the summed
time.
"""
import argparse
import copy
import os
import random
import statistics
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from mmengine.config import DictAction

Timings = Dict[str, List[float]]  # row name -> seconds, one entry per image it ran on


class Row(NamedTuple):
    name: str
    median_ms: float
    mean_ms: float
    share: float  # of the summed time of all rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config', help='training config (its train_dataloader.dataset)')
    p.add_argument('--data-root', required=True,
                   help='dataset written by tools/misc/make_coco_like_dataset.py')
    p.add_argument('--images', type=int, default=200, help='images to run through the pipeline')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--cv2-threads', type=int, default=None,
                   help="OpenCV threads (default: the config's env_cfg.mp_cfg.opencv_num_threads)")
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                   help='override settings of the config, e.g. '
                        'train_dataloader.dataset.pipeline.3.type=Expand')
    args = p.parse_args(argv)
    if args.images < 1:
        p.error('--images must be >= 1')
    return args


def build_dataset(args: argparse.Namespace):
    """The config's training dataset on ``--data-root`` (COCO's 80 classes), and the config."""
    import detr_plugin  # noqa: F401  (registers our modules)
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from detr_plugin.registry import DATASETS
    ann_file = os.path.join(args.data_root, 'annotations', 'instances_train2017.json')
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f'--data-root: no {ann_file} (write it with '
                                'tools/misc/make_coco_like_dataset.py)')
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'detr_plugin'))
    dataset_cfg = cfg.train_dataloader.dataset
    coco_cfg = dataset_cfg.dataset if dataset_cfg.type == 'MultiImageMixDataset' else dataset_cfg
    coco_cfg.update(data_root=args.data_root, ann_file='annotations/instances_train2017.json',
                    data_prefix=dict(img='train2017/'))
    coco_cfg.pop('metainfo', None)
    dataset = DATASETS.build(dataset_cfg)
    dataset.full_init()
    return dataset, cfg


def seed_all(seed: int) -> None:
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def worker_threads(cfg, cv2_threads: Optional[int]) -> None:
    """One torch thread (as in a DataLoader worker) and the worker's OpenCV thread count."""
    import cv2
    import torch
    torch.set_num_threads(1)
    if cv2_threads is None:
        cv2_threads = cfg.get('env_cfg', {}).get('mp_cfg', {}).get('opencv_num_threads')
    if cv2_threads is not None:
        cv2.setNumThreads(cv2_threads)


def row_names(transforms: Sequence[Callable]) -> List[str]:
    """``Resize``, or ``FilterAnnotations #2`` for a type's second occurrence."""
    names, seen = [], {}
    for t in transforms:
        name = type(t).__name__
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f'{name} #{seen[name]}')
    return names


def timed(fn: Callable, *args, times: List[float]):
    start = time.perf_counter()
    out = fn(*args)
    times.append(time.perf_counter() - start)
    return out


def run_transforms(transforms, names, results: dict, timings: Timings) -> Optional[dict]:
    """``results`` through ``transforms``, each timed into ``timings``; None when one drops it."""
    for t, name in zip(transforms, names):
        results = timed(t, results, times=timings.setdefault(name, []))
        if results is None:
            return None
    return results


def profile_plain(dataset, indices: Sequence[int], timings: Timings) -> None:
    transforms = dataset.pipeline.transforms
    names = row_names(transforms)
    for idx in indices:
        run_transforms(transforms, names, dataset.get_data_info(idx), timings)


def profile_mixed(wrapper, indices: Sequence[int], timings: Timings) -> None:
    """As ``MultiImageMixDataset.__getitem__``, with a wrapper transform's None ending the
    image (the wrapper would retry the transform)."""
    inner = wrapper.dataset
    load, load_names = inner.pipeline.transforms, row_names(inner.pipeline.transforms)
    names = row_names(wrapper.pipeline)

    def load_image(i: int, into: Timings) -> Optional[dict]:
        return run_transforms(load, load_names, inner.get_data_info(i), into)

    for idx in indices:
        results = load_image(idx, timings)
        for t, name in zip(wrapper.pipeline, names):
            if results is None:
                break
            if hasattr(t, 'get_indexes'):
                others: Timings = {}
                start = time.perf_counter()
                picked = t.get_indexes(inner)
                picked = picked if isinstance(picked, Sequence) else [picked]
                results['mix_results'] = [load_image(i, others) for i in picked]
                timings.setdefault(f'{name} images', []).append(time.perf_counter() - start)
            results = timed(copy.deepcopy, results, times=timings.setdefault('copy', []))
            results = timed(t, results, times=timings.setdefault(name, []))
            if results is not None:
                results.pop('mix_results', None)


def profile(dataset, num_images: int, seed: int) -> Tuple[List[Row], float]:
    """Rows in pipeline order and the summed seconds, over ``num_images`` images."""
    from mmdet.datasets import MultiImageMixDataset
    indices = [i % len(dataset) for i in range(num_images)]
    timings: Timings = {}
    seed_all(seed)
    if isinstance(dataset, MultiImageMixDataset):
        profile_mixed(dataset, indices, timings)
    else:
        profile_plain(dataset, indices, timings)
    total = sum(sum(t) for t in timings.values())
    rows = [Row(name, 1e3 * statistics.median(t), 1e3 * statistics.mean(t), sum(t) / total)
            for name, t in timings.items()]
    return rows, total


def whole_pipeline_seconds(dataset, num_images: int, seed: int) -> float:
    """Seconds for the same images through the dataset's pipeline in one call each (no
    per-transform timers; an image dropped by a transform is not replaced)."""
    from mmdet.datasets import MultiImageMixDataset
    indices = [i % len(dataset) for i in range(num_images)]
    seed_all(seed)
    start = time.perf_counter()
    for idx in indices:
        if isinstance(dataset, MultiImageMixDataset):
            dataset[idx]
        else:
            dataset.pipeline(dataset.get_data_info(idx))
    return time.perf_counter() - start


def table(rows: Sequence[Row], total: float, num_images: int) -> str:
    lines = ['| transform | median ms/image | mean ms/image | share |',
             '|---|---:|---:|---:|']
    lines += [f'| {r.name} | {r.median_ms:.2f} | {r.mean_ms:.2f} | {100 * r.share:.1f}% |'
              for r in rows]
    lines.append(f'| **total** | | {1e3 * total / num_images:.2f} | 100% |')
    lines.append('')
    lines.append(f'{num_images / total:.1f} images/s in one process')
    return '\n'.join(lines)


def main(argv=None) -> str:
    args = parse_args(argv)
    dataset, cfg = build_dataset(args)
    worker_threads(cfg, args.cv2_threads)
    rows, total = profile(dataset, args.images, args.seed)
    text = table(rows, total, args.images)
    print(text)
    return text


if __name__ == '__main__':
    main()
