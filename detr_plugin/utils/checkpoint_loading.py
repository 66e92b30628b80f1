"""Reading checkpoints safely and checking that their weights fit a model: the one check every
tool (and training's ``load_from`` / ``--resume``) runs before weights reach a model.

Files are read with ``torch.load(weights_only=True)``: tensors, containers, numbers, strings and
the types listed in :mod:`detr_plugin.utils.safe_globals`. A file that needs anything else
(arbitrary pickled objects can run code when loaded) is refused with one line naming the file and
the explicit opt-in for trusted files, ``--trust-checkpoint``.
"""
import os.path as osp
import pickle
import re
import warnings
from typing import Dict, List, NamedTuple, Optional, Set

import torch
from torch import Tensor, nn

TRUST_OPTION = '--trust-checkpoint'


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message is one line."""


class Weights(NamedTuple):
    """A checkpoint's model weights in our names, and its ``meta`` ({} when it has none)."""
    state_dict: Dict[str, Tensor]
    meta: dict


class KeyComparison(NamedTuple):
    """How a state dict's names and shapes differ from a model's."""
    missing: List[str]      # the model's keys absent from the checkpoint
    unexpected: List[str]   # the checkpoint's keys the model does not have
    misshaped: List[str]    # keys of both, as 'key (checkpoint shape) vs (model shape)'
    matching: Set[str]      # keys of both with the same shape

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.misshaped)

    def describe(self) -> str:
        """The differences in one line, e.g. '1 missing keys [a], 2 keys of another shape [...]'."""
        return ', '.join(f'{len(keys)} {what} {summarize(keys)}' for what, keys in (
            ('missing keys', self.missing), ('unexpected keys', self.unexpected),
            ('keys of another shape', self.misshaped)) if keys)


# torch's refusals of a global (a class or function) the file names
UNSAFE_GLOBAL = re.compile(r'GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)')


def unsafe_checkpoint_error(path: str, error: Exception) -> CheckpointError:
    """The one-line refusal of a file that weights-only loading rejected with ``error``."""
    found = UNSAFE_GLOBAL.search(str(error))
    what = f'the object {found.group(1)}' if found else 'objects'
    return CheckpointError(
        f'checkpoint {path!r} holds {what} that only full unpickling can load, which can run '
        f'arbitrary code: if you trust the file, pass {TRUST_OPTION}')


def is_unsafe_pickle_error(error: Exception) -> bool:
    """Whether ``error`` is torch's weights-only refusal of an object the file asks for."""
    return (isinstance(error, pickle.UnpicklingError)
            and UNSAFE_GLOBAL.search(str(error)) is not None)


def first_line(error: Exception) -> str:
    """The reason in ``error``'s message: for torch's weights-only errors the unpickler's own
    (after 'WeightsUnpickler error:'), else the first line."""
    message = str(error).split('WeightsUnpickler error:')[-1]
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[0] if lines else ''


def read_checkpoint(path: str, trust: bool = False) -> dict:
    """The file's contents as a dict, on the CPU; weights-only unless ``trust``.

    Raises CheckpointError (one line) for a missing or unreadable file, a file that needs full
    unpickling (untrusted), or one that does not hold a dict.
    """
    if not osp.isfile(path):
        raise CheckpointError(f'checkpoint {path!r} does not exist')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=not trust)
    except Exception as error:  # any unreadable file: pickle, zip or torch errors
        if is_unsafe_pickle_error(error):
            raise unsafe_checkpoint_error(path, error) from None
        raise CheckpointError(f'cannot read checkpoint {path!r}: {type(error).__name__}: '
                              f'{first_line(error)}') from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'checkpoint {path!r} holds a {type(checkpoint).__name__}, '
                              'not a dict of weights')
    return checkpoint


def weights_of(checkpoint: dict, source: str) -> Weights:
    """The model weights of a checkpoint's contents, in our names, without ``module.`` prefixes.

    Ours: an mmengine checkpoint (``state_dict`` and ``meta``; when mmengine's EMAHook trained
    the model, ``state_dict`` already holds the averaged weights) or a bare state dict. An
    original authors' checkpoint (DETR, Deformable DETR, RT-DETR(v2), D-FINE, DEIM) is converted
    on the fly by :func:`detr_plugin.converters.convert_original_checkpoint`. ``source`` names
    the file in errors.
    """
    if isinstance(checkpoint.get('state_dict'), dict):
        state_dict, meta = checkpoint['state_dict'], checkpoint.get('meta') or {}
    else:
        state_dict, meta = convert_original(checkpoint, source), {'converted_from': source}
        if state_dict is None:
            state_dict, meta = checkpoint, {}
    if not all(isinstance(value, Tensor) for value in state_dict.values()):
        raise CheckpointError(f'checkpoint {source!r} has no state_dict of tensors (top-level keys '
                              f'{summarize(sorted(map(str, checkpoint)))}) and is no original '
                              'DETR, Deformable DETR, RT-DETR(v2), D-FINE or DEIM checkpoint '
                              'that can be converted')
    return Weights({key[len('module.'):] if key.startswith('module.') else key: value
                    for key, value in state_dict.items()}, meta)


def convert_original(checkpoint: dict, source: str) -> Optional[Dict[str, Tensor]]:
    """Our state dict of an original authors' checkpoint; None when it is no layout we know."""
    # imported here: detr_plugin.converters itself reads files with this module
    from detr_plugin.converters import convert_original_checkpoint
    return convert_original_checkpoint(checkpoint, source)


def compare_keys(expected: Dict[str, Tensor], state_dict: Dict[str, Tensor]) -> KeyComparison:
    """Names and shapes of ``state_dict`` against a model's ``expected`` state dict.

    Ignored where the model does not have them: ``ema_*`` entries (the EMA buffers of mmdet 2.x's
    hooks) and the ``num_batches_tracked`` counter of a norm layer whose ``running_var`` it has
    (a FrozenBatchNorm2d keeps none; the converters add one for mmdet's BatchNorm layout).
    """
    given = {key for key in state_dict
             if key in expected or not (key.startswith('ema_') or unkept_counter(key, expected))}
    shared = sorted(expected.keys() & given)
    return KeyComparison(
        missing=sorted(expected.keys() - given),
        unexpected=sorted(given - expected.keys()),
        misshaped=[f'{key} {tuple(state_dict[key].shape)} vs {tuple(expected[key].shape)}'
                   for key in shared if state_dict[key].shape != expected[key].shape],
        matching={key for key in shared if state_dict[key].shape == expected[key].shape})


def unkept_counter(key: str, expected: Dict[str, Tensor]) -> bool:
    """``key`` is a BatchNorm counter of a layer the model has without one."""
    suffix = 'num_batches_tracked'
    return key.endswith('.' + suffix) and key[:-len(suffix)] + 'running_var' in expected


class Fitted(NamedTuple):
    """A checkpoint's weights made to load strictly into a model."""
    state_dict: Dict[str, Tensor]
    skipped: Optional[str]  # one line: what kept the model's own values; None when all fit


def fit_to_model(model: nn.Module, weights: Weights, source: str, partial: bool) -> Fitted:
    """The one checkpoint check: ``weights`` against the model's names and shapes.

    When they differ (another architecture or number of classes), raises CheckpointError naming
    the missing, unexpected and mis-shaped keys in one line, unless ``partial``: then the
    matching weights are kept, the model's own values (e.g. a fresh initialisation) fill the
    other keys, unexpected ones are dropped, and ``skipped`` says which in one line. A
    checkpoint sharing no weight with the model is refused either way.
    """
    expected = model.state_dict()
    comparison = compare_keys(expected, weights.state_dict)
    if comparison.fits:
        return Fitted({key: weights.state_dict[key] for key in expected}, None)
    where = f'checkpoint {source!r} does not fit the model ({type(model).__name__}): '
    if not partial or not comparison.matching:
        hint = '' if comparison.matching else ' (no weight in common)'
        raise CheckpointError(where + comparison.describe() + hint)
    return Fitted({key: weights.state_dict[key] if key in comparison.matching else value
                   for key, value in expected.items()},
                  f'{where}loaded {len(comparison.matching)} of {len(expected)} tensors, kept '
                  f'the model\'s own values for the others: {comparison.describe()}')


def load_detector_checkpoint(model: nn.Module, path: str, partial: bool = False,
                             trust: bool = False) -> Weights:
    """Reads ``path`` (weights-only unless ``trust``), checks it with :func:`fit_to_model` and
    loads it into ``model``; returns the checkpoint's weights and ``meta``.

    On a refusal the model is untouched. With ``partial``, what was not loaded is said in one
    UserWarning line.
    """
    weights = weights_of(read_checkpoint(path, trust), path)
    fitted = fit_to_model(model, weights, path, partial)
    if fitted.skipped is not None:
        warnings.warn(fitted.skipped, stacklevel=2)
    model.load_state_dict(fitted.state_dict)
    return weights


def summarize(keys: List[str], limit: int = 5) -> str:
    """The first ``limit`` keys, and how many more, for a one-line message."""
    more = f', ... (+{len(keys) - limit})' if len(keys) > limit else ''
    return '[' + ', '.join(keys[:limit]) + more + ']'
