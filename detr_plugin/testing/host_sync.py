"""Finds, in a CPU run, the operations that make the host wait for the GPU when run on CUDA.

On CUDA the host queues kernels ahead of the GPU until an operation needs a result the GPU has not
produced yet: a value read into Python (``.item()``, ``bool(t)``, ``int(t)``, ``.tolist()``,
``.numpy()``), a blocking copy to the host, a blocking copy from pageable host memory (PyTorch
synchronises the stream after it; indexing a device tensor makes one of each host index,
``x[[2, 1, 0]]``, and of a host value assigned by index, ``x[index] = True``), or an op whose
output size depends on the data (``nonzero``, ``masked_select``, boolean-mask indexing,
``unique``, ``repeat_interleave`` without ``output_size``, ``bincount``) or that reads a device
scalar on the host (``masked_fill`` with a tensor value, ``equal``). :class:`HostSyncRecorder`
records every such operation of a CPU run with its Python call site, so a test can pin the list
without a GPU.

On CPU every tensor is a CPU tensor, so the recorder tracks where each tensor *would* live:

* **host**: made without a ``device`` argument (``torch.zeros(3)``, ``torch.tensor(list)``), by a
  Python literal (``x[m] = 0``), by ``.cpu()``, or computed only from host tensors;
* **device**: the given modules' parameters and buffers, results of ``.to(device)`` /
  ``new_tensor`` of a device tensor / factories with a ``device`` argument, and everything
  computed from a device tensor; tensors no recorded op made (autograd's) count as device;
* a tensor made before recording (the data loader's batch), by ``torch.from_numpy`` or by a
  constructor Python does not see (``torch.LongTensor(2)``) is on the host when it is moved
  (``.to(device)``: a host-to-device copy) or read (``.tolist()``), on the device otherwise.

Only operations touching a device tensor are recorded. Limits: a device-to-host copy must be
written ``.cpu()`` / ``.numpy()`` / ``.tolist()`` / ``copy_`` into a host tensor to be seen
(``.to('cpu')`` reads as a move to the device, which it is on CPU); calls inside C++ or inside a
``torch.nn.functional`` function are seen only as the aten ops they dispatch; and an op whose CPU
implementation reads values that its CUDA one does not (``F.one_hot``'s range check) is recorded
although it would not wait on CUDA.
"""
import os
import sys
from collections import Counter
from typing import Iterable, List, NamedTuple, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

aten = torch.ops.aten
_TORCH_DIR = os.path.dirname(torch.__file__)
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# aten ops that wait for the GPU whenever an input is on the device, and the name reported
_WAITING_OPS = {
    aten._local_scalar_dense.default: 'item',  # .item(), bool(t), int(t), float(t)
    aten.nonzero.default: 'nonzero',
    aten.masked_select.default: 'masked_select',
    aten._unique.default: 'unique',
    aten._unique2.default: 'unique',
    aten.unique_dim.default: 'unique',
    aten.unique_consecutive.default: 'unique',
    aten.bincount.default: 'bincount',
    aten.equal.default: 'equal',
}
# Python numbers made tensors: host values that an op may read without waiting
_CONSTANTS = {aten.lift_fresh.default, aten.lift_fresh_copy.default, aten.scalar_tensor.default}
_FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.rand,
              torch.randn, torch.randint, torch.linspace, torch.eye, torch.randperm}
_HOST = 'host'
_DEVICE = 'device'


class SyncSite(NamedTuple):
    """Where the host would wait: the op and the innermost Python function outside torch."""
    kind: str      # e.g. 'item', 'nonzero', 'bool index', 'copy to host', 'copy to device'
    function: str  # 'path/to/file.py:function', relative to the repository or site-packages


class HostSyncRecorder:
    """Records the call sites that would make the host wait for the GPU (see the module doc).

    Args:
        modules: their parameters and buffers live on the device.
        optimizers: their states live on the device, except the step counts, which PyTorch's
            optimizers keep on the host unless a group is ``capturable`` or ``fused``.
        stack_depth: how many Python frames outside torch :meth:`report` shows per site.

    Usage::

        with HostSyncRecorder(model, optimizers=[optim_wrapper.optimizer]) as rec:
            model.train_step(data, optim_wrapper)
        print(rec.report()); rec.sites  # Counter of SyncSite
    """

    def __init__(self, *modules: nn.Module, optimizers: Sequence[torch.optim.Optimizer] = (),
                 stack_depth: int = 3) -> None:
        self.place = WeakTensorKeyDictionary()  # tensor -> _HOST | _DEVICE
        for module in modules:
            self.put((*module.parameters(), *module.buffers()), _DEVICE)
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                host_steps = not (group.get('capturable') or group.get('fused'))
                for p in group['params']:
                    for key, value in optimizer.state.get(p, {}).items():
                        self.put([value], _HOST if key == 'step' and host_steps else _DEVICE)
        self.stack_depth = stack_depth
        self.sites: Counter = Counter()     # SyncSite -> count
        self.stacks: Counter = Counter()    # (kind, 'file:line fn <- ...') -> count
        self._modes = (_FunctionLevel(self), _DispatchLevel(self))

    def __enter__(self) -> 'HostSyncRecorder':
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def report(self) -> str:
        """One line per call stack: count, kind, innermost frame first."""
        lines = [f'{self.total} host waits']
        lines += [f'{n:5d}  {kind:15s} {stack}' for (kind, stack), n in self.stacks.most_common()]
        return '\n'.join(lines)

    # ------------------------------------------------------------ placement
    def on_host(self, t: Tensor, unseen: str) -> bool:
        """Whether ``t`` would live on the host; ``unseen`` decides for a tensor no op made."""
        return self.place.get(t, unseen) == _HOST

    def put(self, tensors: Iterable, place: str) -> None:
        for t in tensors:
            if isinstance(t, Tensor):
                self.place[t] = place

    def record(self, kind: str) -> None:
        frames = _outside_frames()
        if not frames:
            return
        self.sites[SyncSite(kind, f'{frames[0][0]}:{frames[0][2]}')] += 1
        stack = ' <- '.join(f'{path}:{line} {fn}' for path, line, fn in frames[:self.stack_depth])
        self.stacks[(kind, stack)] += 1


def _short_path(path: str) -> str:
    path = os.path.abspath(path)
    installed = 'site-packages' + os.sep
    if installed in path:
        return path.split(installed)[-1]
    if path.startswith(_REPO_ROOT + os.sep):
        return os.path.relpath(path, _REPO_ROOT)
    return path


def _outside_frames() -> List[Tuple[str, int, str]]:
    """(path, line, function) of the Python frames outside torch and this file, innermost first."""
    frames, frame = [], sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(_TORCH_DIR) and path != __file__:
            frames.append((_short_path(path), frame.f_lineno, frame.f_code.co_name))
        frame = frame.f_back
    return frames


def _moves_to_device(args: tuple, kwargs: dict) -> bool:
    """Whether ``Tensor.to(*args, **kwargs)`` names a device (rather than only a dtype)."""
    if kwargs.get('device') is not None:
        return True
    return any(isinstance(a, (torch.device, str, int, Tensor)) and not isinstance(a, bool)
               for a in args)


class _FunctionLevel(TorchFunctionMode):
    """Python-level calls: moves between host and device, reads into Python, factories."""

    def __init__(self, rec: HostSyncRecorder) -> None:
        super().__init__()
        self.rec = rec

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rec = self.rec
        name = getattr(func, '__name__', '')
        self_tensor = args[0] if args and isinstance(args[0], Tensor) else None
        if name in ('to', 'cuda') and self_tensor is not None and (
                name == 'cuda' or _moves_to_device(args[1:], kwargs)):
            from_host = rec.on_host(self_tensor, unseen=_HOST)
            if from_host and not kwargs.get('non_blocking', False):
                rec.record('copy to device')
            out = func(*args, **kwargs)
            if out is self_tensor and from_host:  # on CUDA the copy is a new tensor
                out = out.clone()
            rec.put([out], _DEVICE)
            return out
        if name in ('cpu', 'tolist', 'numpy', '__array__') and self_tensor is not None:
            if not rec.on_host(self_tensor, unseen=_HOST):
                rec.record('copy to host')
            out = func(*args, **kwargs)
            if name == 'cpu':
                out = out.clone() if out is self_tensor else out
                rec.put([out], _HOST)
            return out
        if name == 'new_tensor' and self_tensor is not None:
            out = func(*args, **kwargs)
            data = args[1] if len(args) > 1 else kwargs.get('data')
            on_device = not rec.on_host(self_tensor, unseen=_DEVICE) or \
                kwargs.get('device') is not None
            if on_device and (not isinstance(data, Tensor) or rec.on_host(data, unseen=_HOST)):
                rec.record('copy to device')
            rec.put([out], _DEVICE if on_device else _HOST)
            return out
        if func in (torch.tensor, torch.as_tensor):
            out = func(*args, **kwargs)
            data = args[0] if args else kwargs.get('data')
            if kwargs.get('device') is None:
                place = (_DEVICE if isinstance(data, Tensor) and not rec.on_host(data, _HOST)
                         else _HOST)
            else:
                place = _DEVICE
                if not isinstance(data, Tensor) or rec.on_host(data, _HOST):
                    rec.record('copy to device')
            rec.put([out], place)
            return out
        out = func(*args, **kwargs)
        if func in _FACTORIES:
            rec.put([out], _DEVICE if kwargs.get('device') is not None else _HOST)
        return out


class _DispatchLevel(TorchDispatchMode):
    """aten ops: data-dependent shapes and scalar reads on the device; placement propagation."""

    def __init__(self, rec: HostSyncRecorder) -> None:
        super().__init__()
        self.rec = rec

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rec = self.rec
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
        all_host = bool(inputs) and all(rec.on_host(t, unseen=_DEVICE) for t in inputs)
        for kind in () if all_host else self.waiting_kinds(func, args, kwargs):
            rec.record(kind)
        out = func(*args, **kwargs)
        if func in _CONSTANTS or all_host:
            rec.put(tree_flatten(out)[0], _HOST)
        elif inputs:  # in-place ops keep their destination's place; factories stay unseen
            rec.put([t for t in tree_flatten(out)[0]
                     if isinstance(t, Tensor) and not any(t is i for i in inputs)], _DEVICE)
        return out

    def waiting_kinds(self, func, args: tuple, kwargs: dict) -> Tuple[str, ...]:
        """The waits ``func`` causes on CUDA with a device input, one per synchronising call."""
        rec = self.rec
        if func in _WAITING_OPS:
            return (_WAITING_OPS[func],)
        if func in (aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor):
            return () if kwargs.get('output_size') is not None else ('repeat_interleave',)
        if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                    aten._index_put_impl_.default):
            return self.indexing_waits(func, args)
        if func in (aten.masked_fill.Tensor, aten.masked_fill_.Tensor):
            return () if rec.on_host(args[2], unseen=_DEVICE) else ('item',)
        if func is aten.copy_.default:
            dest_host = rec.on_host(args[0], unseen=_DEVICE)
            if dest_host == rec.on_host(args[1], unseen=_DEVICE):
                return ()
            non_blocking = kwargs.get('non_blocking', len(args) > 2 and args[2])
            if dest_host:  # the host waits where it reads the copy, however it was made
                return ('async copy to host' if non_blocking else 'copy to host',)
            return () if non_blocking else ('copy to device',)
        return ()

    def indexing_waits(self, func, args: tuple) -> Tuple[str, ...]:
        """``x[indices]`` / ``x[indices] = values`` with ``x`` on the device: a boolean mask on
        the device is counted on the host (``nonzero``); an index on the host (a Python list:
        ``x[[2, 1, 0]]``) and a host value other than a mask's scalar (``x[index] = True``) are
        copied to the device, blocking."""
        rec = self.rec
        if rec.on_host(args[0], unseen=_DEVICE):
            return ()
        indices = [i for i in args[1] if i is not None]
        host = [rec.on_host(i, unseen=_DEVICE) for i in indices]
        masks = [i.dtype in (torch.bool, torch.uint8) for i in indices]
        host_value = func is not aten.index.Tensor and rec.on_host(args[2], unseen=_DEVICE)
        if host_value and len(indices) == 1 and masks[0] and not host[0] and \
                args[2].numel() == 1:
            return ()  # one mask on the device and a one-element host value: a masked_fill
        waits = ['bool index' for on_host, mask in zip(host, masks) if mask and not on_host]
        return tuple(waits + ['copy to device'] * (sum(host) + host_value))
