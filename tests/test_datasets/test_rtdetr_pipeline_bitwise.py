"""configs/_base_/datasets/coco_detection_rtdetr.py's training pipeline with its drop-in transforms
(ZeroFillExpand, ContiguousRandomFlip) against the same pipeline with mmdet's Expand and
RandomFlip: bitwise the same packed images, boxes and labels for the same seed."""
import pathlib

import numpy as np
import torch
from mmcv.transforms import Compose
from mmdet.structures.bbox import HorizontalBoxes
from mmengine.config import Config

CONFIG = pathlib.Path(__file__).parents[2] / 'configs/_base_/datasets/coco_detection_rtdetr.py'
MMDET_TYPES = {'ZeroFillExpand': 'Expand', 'ContiguousRandomFlip': 'RandomFlip'}


def loaded(rng):
    """What LoadImageFromFile and LoadAnnotations give for a random image with random boxes."""
    h, w = rng.integers(40, 120, size=2)
    xy = rng.random((6, 2)) * [w * 0.7, h * 0.7]
    boxes = np.concatenate([xy, xy + 2 + rng.random((6, 2)) * [w * 0.3 - 2, h * 0.3 - 2]], 1)
    return dict(img=rng.integers(0, 256, (h, w, 3), dtype=np.uint8), img_shape=(h, w),
                ori_shape=(h, w), img_id=0, img_path='x.jpg',
                gt_bboxes=HorizontalBoxes(torch.tensor(boxes, dtype=torch.float32)),
                gt_bboxes_labels=rng.integers(0, 80, 6), gt_ignore_flags=np.zeros(6, bool))


def test_same_packed_outputs_as_with_mmdets_transforms():
    steps = Config.fromfile(str(CONFIG)).train_pipeline[2:]  # after the two loading steps
    types = [t['type'] for t in steps]
    assert set(MMDET_TYPES) <= set(types)
    ours = Compose(steps)
    theirs = Compose([dict(t, type=MMDET_TYPES.get(t['type'], t['type'])) for t in steps])
    rng = np.random.default_rng(0)
    compared = 0
    for seed in range(30):
        sample = loaded(rng)
        np.random.seed(seed)
        want = theirs({k: (v.clone() if k == 'gt_bboxes' else v) for k, v in sample.items()})
        np.random.seed(seed)
        got = ours({k: (v.clone() if k == 'gt_bboxes' else v) for k, v in sample.items()})
        assert (got is None) == (want is None)
        if got is None:
            continue
        compared += 1
        assert torch.equal(got['inputs'], want['inputs'])
        assert torch.equal(got['data_samples'].gt_instances.bboxes.tensor,
                           want['data_samples'].gt_instances.bboxes.tensor)
        assert torch.equal(got['data_samples'].gt_instances.labels,
                           want['data_samples'].gt_instances.labels)
        assert got['data_samples'].flip == want['data_samples'].flip
    assert compared >= 20
