"""One training iteration as the runner does it, on a synthetic loader batch (no dataset)."""
import types
from typing import Tuple

import numpy as np
from mmdet.datasets.transforms import PackDetInputs
from mmengine.hooks import RuntimeInfoHook
from mmengine.logging import MessageHub


def loader_batch(seed: int, num_images: int = 2, size: Tuple[int, int] = (32, 32)) -> dict:
    """What mmdet's PackDetInputs gives the data preprocessor: uint8 (3, h, w) images and gt
    boxes (xyxy pixels, about half the image wide) on the host; image i has 2 + i objects."""
    rng = np.random.default_rng(seed)
    h, w = size
    pack, batch = PackDetInputs(), dict(inputs=[], data_samples=[])
    for i in range(num_images):
        n = 2 + i
        corner = rng.random((n, 2)) * (w / 2, h / 2)
        extent = (0.1 + 0.4 * rng.random((n, 2))) * (w, h)
        boxes = np.concatenate([corner, corner + extent], 1).astype(np.float32)
        packed = pack(dict(img=rng.integers(0, 255, (h, w, 3), dtype=np.uint8), img_id=i,
                           img_path='', ori_shape=size, img_shape=size, scale_factor=(1., 1.),
                           flip=False, flip_direction=None, gt_bboxes=boxes,
                           gt_bboxes_labels=np.arange(n) % 3, gt_ignore_flags=np.zeros(n, bool)))
        batch['inputs'].append(packed['inputs'])
        batch['data_samples'].append(packed['data_samples'])
    return batch


def step_and_log(model, optim_wrapper, batch: dict) -> dict:
    """``model.train_step`` and the runner's reading of its outputs (RuntimeInfoHook)."""
    outputs = model.train_step(batch, optim_wrapper)
    runner = types.SimpleNamespace(message_hub=MessageHub.get_current_instance())
    RuntimeInfoHook().after_train_iter(runner, 0, outputs=outputs)
    return outputs
