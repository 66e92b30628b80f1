"""The few non-tensor types in our checkpoints, allow-listed for ``torch.load(weights_only=True)``.

``import detr_plugin`` adds them (:func:`allow_checkpoint_types`), so that mmengine's own
loading (``--resume``, ``load_from``), mmdet's ``init_detector`` / ``tools/test.py`` and ours read
the checkpoints mmengine writes under torch >= 2.6's weights-only default, with no environment
variable. Every entry only rebuilds data: none runs code chosen by the file, and the values inside
them are again unpickled by torch's restricted unpickler.

- NumPy arrays and scalars: mmengine's message hub keeps its logged scalars in NumPy arrays
  (``HistoryBuffer``) and numbers such as the learning rate as NumPy scalars; ``RNGStateHook``
  stores ``np.random.get_state()`` (a uint32 array). Arrays are rebuilt by ``_reconstruct``
  (only ``ndarray`` itself may be its subtype, as no subclass is listed) and ``ndarray``'s
  ``__setstate__``; scalars by ``scalar(dtype, bytes)``; a ``dtype`` by its constructor and the
  ``__setstate__`` of its class. Numeric and boolean dtypes only: object arrays are not listed.
  Files written with NumPy 1.x name the module ``numpy.core.multiarray``, NumPy 2's
  ``numpy._core.multiarray``; both names are listed.
- ``mmengine.logging.HistoryBuffer``: the message hub's per-key history (two arrays and an int),
  rebuilt by its ``__setstate__``. Its state also holds its statistics methods
  (``HistoryBuffer.mean`` ...), which pickle writes as ``getattr(HistoryBuffer, 'mean')``:
  the name ``builtins.getattr`` is given :func:`history_buffer_statistic`, which returns those
  four functions and refuses anything else (the real ``getattr`` would reach any attribute of
  any allowed object).
- ``argparse.Namespace``: the original DETR and Deformable DETR checkpoints store their
  command-line arguments in one (strings, numbers, lists), rebuilt by setting its ``__dict__``.
"""
import argparse
import pickle
from typing import Callable, List, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

SafeGlobal = Union[Callable, Tuple[Callable, str]]

HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')
NUMERIC_DTYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                  np.uint64, np.float16, np.float32, np.float64)


def history_buffer_statistic(owner: type, name: str) -> Callable:
    """``getattr(owner, name)`` for HistoryBuffer's statistics methods only; else an
    UnpicklingError, as for any global the weights-only loader does not allow."""
    if owner is HistoryBuffer and name in HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    # worded as torch's refusals, so that callers recognise it as one
    what = f'{getattr(owner, "__module__", "?")}.{getattr(owner, "__qualname__", owner)}.{name}'
    raise pickle.UnpicklingError(f'GLOBAL {what} was not an allowed global (through getattr, '
                                 'only HistoryBuffer\'s statistics methods are)')


def checkpoint_types() -> List[SafeGlobal]:
    """The allow-list: classes and functions, with the pickled name when it differs."""
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    numpy_functions = []
    for name in ('_reconstruct', 'scalar'):
        function = getattr(multiarray, name)
        numpy_functions += [(function, f'numpy.core.multiarray.{name}'),
                            (function, f'numpy._core.multiarray.{name}')]
    dtype_classes = [type(np.dtype(t)) for t in NUMERIC_DTYPES]
    return [np.ndarray, np.dtype, *dtype_classes, *numpy_functions, HistoryBuffer,
            (history_buffer_statistic, 'builtins.getattr'), argparse.Namespace]


def allow_checkpoint_types() -> None:
    """Adds :func:`checkpoint_types` to torch's weights-only allow-list (idempotent)."""
    torch.serialization.add_safe_globals(checkpoint_types())
