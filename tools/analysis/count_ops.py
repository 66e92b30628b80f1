"""Aten ops of one inference forward, by module, source file, call site and name, on the CPU.

Eager inference at batch 1 on a GPU is bound by the host: one Python dispatch and one kernel
launch per op, so the op count is a CPU-side proxy for its time. The tool builds the config's
model (random weights, no checkpoint), wraps it as tools/analysis/benchmark_rtdetr.py times it
(:class:`detr_plugin.deploy.End2EndDetector` on :func:`detr_plugin.deploy.fuse_for_inference`),
runs one forward to warm it up and counts the ops of a second one::

    python tools/analysis/count_ops.py configs/dfine/dfine_hgnetv2-s_8xb4-132e_coco.py --size 640

View ops (view, transpose, slice, ...) launch no kernel; they are counted apart. An op belongs to
the innermost module running it, named to ``--depth`` levels (list indices not counted), and to
the innermost frame outside torch that called it. The CPU runs multi-scale deformable attention
on its PyTorch path (a few ops per level), where a GPU runs one kernel.
"""
import argparse
import collections
import os
import sys
from typing import Dict, List, Tuple

import torch
from mmengine.config import Config, DictAction
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

# ops that return a view, change metadata or compute no tensor: no kernel on the GPU
VIEW_OPS = frozenset({
    '_reshape_alias', '_unsafe_view', 'alias', 'as_strided', 'chunk', 'detach', 'expand',
    'flatten', 'lift_fresh', 'narrow', 'permute', 'promote_types', 'reshape', 'select', 'slice',
    'split', 'split_with_sizes', 'squeeze', 't', 'transpose', 'unbind', 'unflatten', 'unsqueeze',
    'view'})
TORCH_DIR = os.path.dirname(torch.__file__)


class OpCounter(TorchDispatchMode):
    """Counts the aten ops run inside it by (module, op name) and by (call site, op name).

    Args:
        model: its submodules are hooked for as long as the counter is active; an op is
            attributed to the innermost one running (named from ``model``, cut to ``depth``
            levels, list indices not counted), else to ``'(top)'``.
        depth: levels of module names kept.
    """

    def __init__(self, model: nn.Module, depth: int = 1) -> None:
        super().__init__()
        self.model = model
        self.depth = depth
        self.by_module: Dict[Tuple[str, str], int] = collections.Counter()
        self.by_site: Dict[Tuple[str, str], int] = collections.Counter()
        self._stack: List[str] = ['(top)']
        self._hooks = []

    def __enter__(self):
        for name, module in self.model.named_modules():
            if name:
                label = self.label(name)
                self._hooks += [
                    module.register_forward_pre_hook(lambda m, a, label=label:
                                                     self._stack.append(label)),
                    module.register_forward_hook(lambda m, a, out: self._pop())]
        return super().__enter__()

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        return super().__exit__(*exc)

    def _pop(self) -> None:
        self._stack.pop()  # returns None: a forward hook's return value replaces the output

    def label(self, name: str) -> str:
        parts, kept = [], 0
        for part in name.split('.'):
            if kept == self.depth and not part.isdigit():
                break
            parts.append(part)
            kept += not part.isdigit()
        return '.'.join(parts)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.by_module[self._stack[-1], name] += 1
        self.by_site[call_site(), name] += 1
        return func(*args, **(kwargs or {}))


def call_site() -> str:
    """'path:line function' of the innermost frame outside torch and this file."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(TORCH_DIR)
                                 or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None:
        return '?'
    path = frame.f_code.co_filename
    if 'site-packages' in path:  # an installed package: from its name on
        path = path.split('site-packages' + os.sep, 1)[1]
    elif path.startswith(os.getcwd()):
        path = os.path.relpath(path)
    return f'{path}:{frame.f_lineno} {frame.f_code.co_name}'


def totals(counts: Dict[Tuple[str, str], int], key=lambda k: k) -> Dict[str, Tuple[int, int]]:
    """{key(group): (ops, ops that are not views)} in first-seen order."""
    out: Dict[str, List[int]] = {}
    for (group, op), n in counts.items():
        row = out.setdefault(key(group), [0, 0])
        row[0] += n
        row[1] += n * (op not in VIEW_OPS)
    return {k: tuple(v) for k, v in out.items()}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('--size', type=int, nargs='+', default=[640], help='H [W] of the images')
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--dtype', choices=['float32', 'float64'], default='float32')
    p.add_argument('--depth', type=int, default=2, help='levels of module names')
    p.add_argument('--top', type=int, default=30, help='call sites and op names shown')
    p.add_argument('--no-fuse', action='store_true', help='skip fuse_for_inference')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    return p.parse_args()


def build(args) -> nn.Module:
    from detr_plugin.deploy import End2EndDetector, fuse_for_inference
    from detr_plugin.registry import MODELS
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval().to(getattr(torch, args.dtype))
    return End2EndDetector(model if args.no_fuse else fuse_for_inference(model))


def main():
    args = parse_args()
    from detr_plugin.utils import register_all_modules
    register_all_modules()
    model = build(args)
    h, w = (args.size * 2)[:2]
    images = torch.rand(args.batch, 3, h, w, generator=torch.Generator().manual_seed(0),
                        dtype=getattr(torch, args.dtype))
    counter = OpCounter(model.detector, args.depth)
    with torch.no_grad():
        model(images)
        with counter:
            model(images)
    ops, kernels = (sum(v[i] for v in totals(counter.by_module).values()) for i in (0, 1))
    print(f'{ops} aten ops ({kernels} not views) in one forward of End2EndDetector'
          f'{"" if args.no_fuse else "(fused)"}, {args.config}, '
          f'{args.batch}x3x{h}x{w} {args.dtype}')
    print('\n| module | ops | not views |\n|---|---|---|')
    for name, (n, k) in totals(counter.by_module).items():
        print(f'| {name} | {n} | {k} |')
    print('\n| file | ops | not views |\n|---|---|---|')
    for name, (n, k) in sorted(totals(counter.by_site, lambda s: s.split(':')[0]).items(),
                               key=lambda kv: -kv[1][1]):
        print(f'| {name} | {n} | {k} |')
    print(f'\nsites (top {args.top} by ops that are not views):')
    for site, (n, k) in sorted(totals(counter.by_site).items(), key=lambda kv: -kv[1][1])[
            :args.top]:
        print(f'{k:5d} {n:5d}  {site}')
    names = collections.Counter()
    for (_, op), n in counter.by_module.items():
        names[op] += n
    print(f'\nops (top {args.top}): ' + ', '.join(f'{op} {n}'
                                                   for op, n in names.most_common(args.top)))


if __name__ == '__main__':
    main()
