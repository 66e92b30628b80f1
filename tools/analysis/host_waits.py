"""Where a training step of a config would make the host wait for the GPU, found on the CPU.

Builds the config's model and optimizer (random weights, no checkpoint loaded), runs one training
step on a synthetic batch to create the optimizer's state, then records a second step and the
runner's logging of it with :class:`detr_plugin.testing.HostSyncRecorder` and prints every site
with its count, innermost frame first::

    python tools/analysis/host_waits.py configs/rtdetr/rtdetr_r18vd_8xb2-72e_coco.py \\
        --size 64 --cfg-options model.decoder.num_layers=2

On the GPU, ``tools/analysis/step_breakdown.py --sync-debug K`` counts the same waits from CUDA's
own reports, on real data.
"""
import argparse
import logging

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

from detr_plugin.registry import MODELS
from detr_plugin.testing import HostSyncRecorder, loader_batch, step_and_log
from detr_plugin.utils import register_all_modules


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('--batch-size', type=int, default=2)
    p.add_argument('--size', type=int, default=64, help='square image side in pixels')
    p.add_argument('--depth', type=int, default=3, help='frames shown per site')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    return p.parse_args()


def main():
    args = parse_args()
    register_all_modules(init_default_scope=False)
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    cfg.model.backbone.init_cfg = None  # random weights: nothing is downloaded
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('detr_plugin'):
        model = MODELS.build(cfg.model)
        model.init_weights()
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    model.train()
    size = (args.size, args.size)
    step_and_log(model, optim_wrapper, loader_batch(0, args.batch_size, size))
    with HostSyncRecorder(model, optimizers=[optim_wrapper.optimizer],
                          stack_depth=args.depth) as recorder:
        step_and_log(model, optim_wrapper, loader_batch(1, args.batch_size, size))
    print(recorder.report())


if __name__ == '__main__':
    main()
