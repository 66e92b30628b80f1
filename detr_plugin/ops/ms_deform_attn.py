"""Multi-scale deformable attention (MSDA), the sampling core of Deformable DETR and RT-DETR(v2).

``multi_scale_deformable_attention`` validates its inputs and dispatches to one of two backends:

* ``'cuda'``: our kernels in ``detr_plugin._ext`` (detr_plugin/ops/csrc), with autograd;
* ``'pytorch'``: ``F.grid_sample`` (or a gather, for ``method='discrete'``) per level, used on
  CPU, when the extension is missing or fails to load (then with a one-time warning, on the first
  CUDA call), under tracing / ONNX export (opset >= 16, where grid_sample exists), and on request.

``backend=None`` picks automatically; the environment variable ``DETR_PLUGIN_MSDA_BACKEND``
(``pytorch`` | ``cuda`` | ``auto``) overrides that automatic choice.

Two ways of sampling (``method``), the same in both backends:

* ``'default'``: bilinear, as ``grid_sample(mode='bilinear', padding_mode='zeros',
  align_corners=False)``: a location ``(x, y)`` in [0, 1] is the pixel ``(x * W_l - 0.5,
  y * H_l - 0.5)``; corners off the map read 0.
* ``'discrete'``: RT-DETRv2's nearest-cell mode: column ``floor(x * W_l + 0.5)`` and row
  ``floor(y * H_l + 0.5)`` (computed in the locations' dtype, multiply then add, as the original),
  clamped to the map, so points off the map read the border cell. This is the cell whose top-left
  corner is nearest, half a cell off grid_sample's nearest mode, as in the original. The original
  clamps both coordinates to ``H_l - 1`` (its "FIX ME? for rectangle input"); here the column is
  clamped to ``W_l - 1``, which agrees on square maps (RT-DETRv2's 640 x 640 inputs) and stays
  inside the map on others. No gradient flows to the locations (they are detached), as in the
  original, where the rounding cuts the graph.

Sampling points may differ per level: ``num_points = (P_0, ..., P_{L-1})`` with locations and
weights laid out as ``(..., sum(P_l), 2)`` / ``(..., sum(P_l))``, level l's points contiguous
(RT-DETRv2's ``num_points_list`` layout). With P points on every level the
``(..., L, P, 2)`` / ``(..., L, P)`` layout of Deformable DETR is the same memory and is accepted
as well.

Deterministic backward (``deterministic``): the CUDA backward's default kernel sums the value
gradient with floating-point atomics, whose order varies from run to run (last-bit differences that
training amplifies). With ``deterministic=True`` the CUDA backend uses instead a backward without
float atomics (detr_plugin/ops/csrc/ms_deform_attn_deterministic.cu: the sampling corners sorted by
value row, each row summed in a fixed order), bitwise the same on every run, at the cost of time
and of about 20 bytes per sampling corner of one batch element (204 MB for Deformable DETR's
encoder). ``deterministic=None`` follows ``torch.are_deterministic_algorithms_enabled()``, which
``torch.use_deterministic_algorithms(True)`` and mmengine's ``randomness=dict(deterministic=True)``
turn on. The forward is deterministic in every backend. The PyTorch backend has no switch of its
own: on CPU it is deterministic; on CUDA, grid_sample's backward (bilinear) uses atomics, and under
``torch.use_deterministic_algorithms(True)`` torch raises an error for it, while the gather's
backward (discrete) is made deterministic by that same global mode only.
"""
import importlib
import os
import warnings
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

BACKENDS = ('auto', 'cuda', 'pytorch')
METHODS = ('default', 'discrete')
ENV_BACKEND = 'DETR_PLUGIN_MSDA_BACKEND'


class _ExtState:
    """Lazy, one-time import of ``detr_plugin._ext``; a failure is kept and warned about once."""
    module = None
    error: Optional[BaseException] = None
    tried = False
    warned = False


def _cuda_ext():
    """Returns the compiled module, or None when it is missing or fails to load."""
    if not _ExtState.tried:
        _ExtState.tried = True
        try:
            _ExtState.module = importlib.import_module('detr_plugin._ext')
        except Exception as err:  # ImportError, or OSError for a build against another torch
            _ExtState.error = err
    return _ExtState.module


def cuda_ext_available() -> bool:
    """Whether the CUDA op can run here (extension loaded and a GPU present)."""
    return torch.cuda.is_available() and _cuda_ext() is not None


def _warn_fallback_once() -> None:
    if not _ExtState.warned:
        _ExtState.warned = True
        warnings.warn(
            'detr_plugin._ext (the CUDA multi-scale deformable attention op) could not be loaded '
            f'({_ExtState.error!r}); using the slower PyTorch grid_sample path instead. '
            'Rebuild it with `pip install --no-build-isolation -e .` against this torch.',
            RuntimeWarning, stacklevel=3)


# -- input checks ---------------------------------------------------------------------------------

def level_layout(spatial_shapes: Tensor, level_start_index: Tensor, num_value: int,
                 shapes: Optional[Sequence[Tuple[int, int]]] = None) -> List[Tuple[int, int]]:
    """Checks that the levels tile ``value`` and returns them as ``[(H_l, W_l), ...]``.

    With ``shapes`` (the same levels on the host) the check reads no tensor: ``shapes`` must
    have one (H_l, W_l) per row of spatial_shapes and sum(H_l * W_l) == num_value, and is trusted
    to equal spatial_shapes and to give level_start_index. Without it, spatial_shapes and
    level_start_index are read back from the device (on a GPU the host waits for them) and
    level_start_index must also be the exclusive cumulative sum of H_l * W_l (the kernels index
    value with both). Raises ValueError naming what differs.
    """
    from_host = shapes is not None
    name = 'shapes' if from_host else 'spatial_shapes'
    if from_host:
        shapes = [(int(h), int(w)) for h, w in shapes]
        if len(shapes) != spatial_shapes.shape[0]:
            raise ValueError(f'shapes has {len(shapes)} levels but spatial_shapes '
                             f'{spatial_shapes.shape[0]}')
    else:
        shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    sizes = [h * w for h, w in shapes]
    if any(h <= 0 or w <= 0 for h, w in shapes):
        raise ValueError(f'{name} must be positive (H, W) pairs, got {shapes}')
    if sum(sizes) != num_value:
        raise ValueError(f'value has {num_value} tokens but {name} {shapes} sum to {sum(sizes)}')
    if from_host:
        return shapes
    starts = [int(s) for s in level_start_index.tolist()]
    expected_starts = [sum(sizes[:i]) for i in range(len(sizes))]
    if starts != expected_starts:
        raise ValueError(f'level_start_index {starts} does not match spatial_shapes {shapes} '
                         f'(expected {expected_starts})')
    return shapes


def _check_inputs(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                  sampling_locations: Tensor, attention_weights: Tensor,
                  num_points: Optional[Sequence[int]], method: str) -> Tuple[int, ...]:
    """Shapes, dtypes and devices (no data access); returns the points of each level, (P_l, ...).

    Raises TypeError / ValueError naming the argument.
    """
    named = dict(value=value, spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                 sampling_locations=sampling_locations, attention_weights=attention_weights)
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
    for name in ('value', 'sampling_locations', 'attention_weights'):
        if not named[name].is_floating_point():
            raise TypeError(f'{name} must be a floating point tensor, got {named[name].dtype}')
    for name in ('sampling_locations', 'attention_weights'):
        if named[name].dtype != value.dtype:
            raise TypeError(f'{name} has dtype {named[name].dtype} but value has {value.dtype}; '
                            'cast them to one dtype')
    for name in ('spatial_shapes', 'level_start_index'):
        if named[name].is_floating_point() or named[name].is_complex():
            raise TypeError(f'{name} must be an integer tensor, got {named[name].dtype}')
    for name, t in named.items():
        if t.device != value.device:
            raise ValueError(f'{name} is on {t.device} but value is on {value.device}')
    if method not in METHODS:
        raise ValueError(f'method must be one of {METHODS}, got {method!r}')
    if value.dim() != 4:
        raise ValueError(f'value must be (bs, num_value, heads, dim), got {tuple(value.shape)}')
    if sampling_locations.dim() not in (5, 6) or sampling_locations.shape[-1] != 2:
        raise ValueError('sampling_locations must be (bs, num_query, heads, levels, points, 2) or '
                         f'(bs, num_query, heads, sum(num_points), 2), got '
                         f'{tuple(sampling_locations.shape)}')
    per_level = sampling_locations.dim() == 6  # (..., L, P, 2): P points on every level
    if attention_weights.dim() != sampling_locations.dim() - 1:
        layout = 'levels, points' if per_level else 'sum(num_points)'
        raise ValueError(f'attention_weights must be (bs, num_query, heads, {layout}) like '
                         f'sampling_locations, got {tuple(attention_weights.shape)}')
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f'spatial_shapes must be (levels, 2), got {tuple(spatial_shapes.shape)}')
    if level_start_index.shape != spatial_shapes.shape[:1]:
        raise ValueError(f'level_start_index must be ({spatial_shapes.shape[0]},) like '
                         f'spatial_shapes, got {tuple(level_start_index.shape)}')
    bs, num_query, heads = sampling_locations.shape[:3]
    for name, t in (('value', value), ('attention_weights', attention_weights)):
        if t.shape[0] != bs:
            raise ValueError(f'batch size of {name} ({t.shape[0]}) differs from '
                             f'sampling_locations ({bs})')
        if t.shape[2] != heads:
            raise ValueError(f'number of heads of {name} ({t.shape[2]}) differs from '
                             f'sampling_locations ({heads})')
    if attention_weights.shape[1] != num_query:
        raise ValueError(f'attention_weights has {attention_weights.shape[1]} queries, '
                         f'sampling_locations {num_query}')
    levels = spatial_shapes.shape[0]
    if per_level:
        return _uniform_points(sampling_locations, attention_weights, levels, num_points)
    return _listed_points(sampling_locations, attention_weights, levels, num_points)


def _uniform_points(sampling_locations: Tensor, attention_weights: Tensor, levels: int,
                    num_points: Optional[Sequence[int]]) -> Tuple[int, ...]:
    """The (..., L, P, 2) layout: checks L and P, and num_points if given."""
    if sampling_locations.shape[3] != levels or attention_weights.shape[3] != levels:
        raise ValueError(f'number of levels differs: spatial_shapes {levels}, '
                         f'sampling_locations {sampling_locations.shape[3]}, attention_weights '
                         f'{attention_weights.shape[3]}')
    points = sampling_locations.shape[4]
    if attention_weights.shape[4] != points:
        raise ValueError(f'number of points differs: sampling_locations {points}, '
                         f'attention_weights {attention_weights.shape[4]}')
    if num_points is not None and tuple(num_points) != (points,) * levels:
        raise ValueError(f'num_points {tuple(num_points)} differs from the {points} points per '
                         f'level of sampling_locations {tuple(sampling_locations.shape)}')
    return (points,) * levels


def _listed_points(sampling_locations: Tensor, attention_weights: Tensor, levels: int,
                   num_points: Optional[Sequence[int]]) -> Tuple[int, ...]:
    """The (..., sum(P_l), 2) layout: num_points is required and must add up."""
    if num_points is None:
        raise ValueError('num_points (points per level) is needed with sampling_locations of shape '
                         f'(bs, num_query, heads, sum(num_points), 2), got '
                         f'{tuple(sampling_locations.shape)}')
    counts = tuple(num_points)
    if len(counts) != levels or not all(isinstance(n, int) and n > 0 for n in counts):
        raise ValueError(f'num_points must be {levels} positive ints (one per level of '
                         f'spatial_shapes), got {counts}')
    total = sampling_locations.shape[3]
    if sum(counts) != total or attention_weights.shape[3] != total:
        raise ValueError(f'number of points differs: num_points {counts} sum to {sum(counts)}, '
                         f'sampling_locations has {total}, attention_weights '
                         f'{attention_weights.shape[3]}')
    return counts


# -- backends -------------------------------------------------------------------------------------

def ms_deform_attn_pytorch(value: Tensor, shapes: List[Tuple[int, int]], sampling_locations: Tensor,
                           attention_weights: Tensor, num_points: Optional[Sequence[int]] = None,
                           method: str = 'default') -> Tensor:
    """The PyTorch path: shapes as ``[(H_l, W_l), ...]``; locations and weights in either layout
    of the module docstring (``num_points`` needed for the (..., sum(P_l), 2) one); returns
    (bs, num_query, heads * dim)."""
    bs, _, heads, dim = value.shape
    num_query = sampling_locations.shape[1]
    if sampling_locations.dim() == 6:  # (bs, Q, heads, L, P, 2) -> (bs, Q, heads, L * P, 2)
        num_points = (sampling_locations.shape[4],) * sampling_locations.shape[3]
        sampling_locations = sampling_locations.flatten(3, 4)
        attention_weights = attention_weights.flatten(3, 4)
    sample = _sample_bilinear if method == 'default' else _sample_nearest
    value_levels = value.split([h * w for h, w in shapes], dim=1)
    location_levels = sampling_locations.split(list(num_points), dim=3)
    weight_levels = attention_weights.split(list(num_points), dim=3)
    output = value.new_zeros(bs * heads, dim, num_query)
    for shape, value_level, location, weight, points in zip(shapes, value_levels, location_levels,
                                                            weight_levels, num_points):
        # (bs, num_query, heads, points, 2) -> (bs*heads, num_query, points, 2)
        location = location.transpose(1, 2).reshape(bs * heads, num_query, points, 2)
        sampled = sample(value_level, shape, location)  # (bs*heads, dim, num_query, points)
        # (bs, num_query, heads, points) -> (bs*heads, 1, num_query, points)
        weight = weight.transpose(1, 2).reshape(bs * heads, 1, num_query, points)
        output = output + (sampled * weight).sum(-1)
    # (bs*heads, dim, num_query) -> (bs, num_query, heads*dim)
    return output.view(bs, heads * dim, num_query).transpose(1, 2).contiguous()


def _sample_bilinear(value_level: Tensor, shape: Tuple[int, int], location: Tensor) -> Tensor:
    """value_level (bs, H*W, heads, dim), location (bs*heads, Q, P, 2) as (x, y) in [0, 1]
    -> (bs*heads, dim, Q, P), by grid_sample."""
    bs, _, heads, dim = value_level.shape
    # contiguous: CPU grid_sample reads this strided view wrongly in 16 bits (NaN, huge values)
    feature = value_level.permute(0, 2, 3, 1).reshape(bs * heads, dim, *shape).contiguous()
    grid = 2 * location - 1  # grid_sample's [-1, 1] convention
    return F.grid_sample(feature, grid, mode='bilinear', padding_mode='zeros', align_corners=False)


def _sample_nearest(value_level: Tensor, shape: Tuple[int, int], location: Tensor) -> Tensor:
    """As _sample_bilinear, but each point reads the one cell (floor(x * W + 0.5),
    floor(y * H + 0.5)) clamped to the map (the module docstring's 'discrete')."""
    bs, _, heads, dim = value_level.shape
    height, width = shape
    n, num_query, points, _ = location.shape
    # multiply, then add, in the locations' dtype: the same cells as the original's eager code
    col = (location[..., 0] * width + 0.5).long().clamp_(0, width - 1)  # (bs*heads, Q, P)
    row = (location[..., 1] * height + 0.5).long().clamp_(0, height - 1)
    token = (row * width + col).reshape(n, num_query * points, 1).expand(-1, -1, dim)
    rows = value_level.transpose(1, 2).reshape(n, height * width, dim)
    sampled = rows.gather(1, token)  # (bs*heads, Q*P, dim)
    return sampled.view(n, num_query, points, dim).permute(0, 3, 1, 2)


class _MSDeformAttnCUDA(torch.autograd.Function):
    """Autograd wrapper of the kernels in detr_plugin/ops/csrc (inputs already validated).

    sampling_locations (bs, Q, heads, sum(P_l), 2) and attention_weights (bs, Q, heads, sum(P_l));
    num_points (P_0, ...) on the host. For discrete sampling the locations get no gradient.
    ``deterministic`` (a bool, resolved at the call) picks the backward without float atomics.
    """

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations,
                attention_weights, num_points, discrete, deterministic):
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights)
        ctx.num_points, ctx.discrete, ctx.deterministic = num_points, discrete, deterministic
        return _cuda_ext().ms_deform_attn_forward(value, spatial_shapes, level_start_index,
                                                  sampling_locations, attention_weights,
                                                  list(num_points), discrete)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        ext = _cuda_ext()
        backward = ext.ms_deform_attn_backward
        if ctx.deterministic:
            backward = getattr(ext, 'ms_deform_attn_backward_deterministic', None)
            if backward is None:
                raise RuntimeError('detr_plugin._ext predates the deterministic MSDA backward; '
                                   'rebuild it with `pip install --no-build-isolation -e .`')
        grad_value, grad_locations, grad_weights = backward(
            *ctx.saved_tensors, grad_output.contiguous(), list(ctx.num_points), ctx.discrete)
        if ctx.discrete:
            grad_locations = None
        return grad_value, None, None, grad_locations, grad_weights, None, None, None


def _resolve_backend(backend: Optional[str], device: torch.device) -> str:
    requested = backend if backend is not None else os.environ.get(ENV_BACKEND, 'auto').lower()
    if requested not in BACKENDS:
        source = 'backend' if backend is not None else ENV_BACKEND
        raise ValueError(f'{source} must be one of {BACKENDS}, got {requested!r}')
    exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
    if requested == 'pytorch' or device.type != 'cuda' or exporting:
        if requested == 'cuda' and not exporting:
            raise ValueError(f"backend='cuda' needs CUDA tensors, got {device}")
        return 'pytorch'
    if _cuda_ext() is None:
        if requested == 'cuda':
            raise RuntimeError(f'detr_plugin._ext is unavailable: {_ExtState.error!r}')
        _warn_fallback_once()
        return 'pytorch'
    return 'cuda'


def resolve_deterministic(deterministic: Optional[bool]) -> bool:
    """The op's ``deterministic`` argument as a bool: None follows
    ``torch.are_deterministic_algorithms_enabled()``; True / False force it."""
    if deterministic is None:
        return torch.are_deterministic_algorithms_enabled()
    if not isinstance(deterministic, bool):
        raise TypeError(f'deterministic must be None, True or False, got {deterministic!r}')
    return deterministic


def multi_scale_deformable_attention(value: Tensor, spatial_shapes: Tensor,
                                     level_start_index: Tensor, sampling_locations: Tensor,
                                     attention_weights: Tensor, backend: Optional[str] = None,
                                     num_points: Optional[Sequence[int]] = None,
                                     method: str = 'default',
                                     deterministic: Optional[bool] = None,
                                     shapes: Optional[Sequence[Tuple[int, int]]] = None) -> Tensor:
    """Samples each level at the given locations and sums with attention weights.

    Args:
        value: (bs, num_value, heads, dim), the levels' tokens concatenated (row-major per level).
        spatial_shapes: (levels, 2) integer, (H_l, W_l) per level; sum(H_l * W_l) == num_value.
        level_start_index: (levels,) integer, first token of each level in value.
        sampling_locations: (x, y) normalized to [0, 1] (outside is allowed), either
            (bs, num_query, heads, levels, points, 2), P points on every level, or
            (bs, num_query, heads, sum(num_points), 2), level l's num_points[l] points contiguous.
        attention_weights: (bs, num_query, heads, levels, points) or
            (bs, num_query, heads, sum(num_points)), like sampling_locations.
        backend: None (automatic), 'auto', 'cuda' or 'pytorch'.
        num_points: points per level, a sequence of ``levels`` positive ints on the host; needed
            for the second layout, optional (and checked) for the first.
        method: 'default' (bilinear) or 'discrete' (nearest cell, no gradient for the locations),
            as the module docstring says.
        deterministic: whether the CUDA backend's backward must be bitwise reproducible (no float
            atomics; slower, more memory). None (default) follows
            ``torch.are_deterministic_algorithms_enabled()`` at this call: on under
            ``torch.use_deterministic_algorithms(True)`` or mmengine's
            ``randomness=dict(deterministic=True)``. The PyTorch backend ignores it (module
            docstring: deterministic on CPU; on CUDA grid_sample's backward is not, and torch's
            deterministic mode raises an error for it).
        shapes: the levels' (H_l, W_l) on the host, the values of spatial_shapes (e.g.
            ``MultiScaleLevels.shapes``): then no tensor is read on the host, so the call does not
            wait for the GPU and can be captured in a CUDA graph. Without it (mmcv-style callers)
            spatial_shapes and level_start_index are read back from the device at every call to
            be checked (on a GPU the host waits for them).

    Returns:
        (bs, num_query, heads * dim): for each query and head, the weighted sum over levels and
        points of value sampled at the locations. value, sampling_locations and attention_weights
        must share one floating dtype and one device with the index tensors.
    """
    counts = _check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                           attention_weights, num_points, method)
    deterministic = resolve_deterministic(deterministic)
    shapes = level_layout(spatial_shapes, level_start_index, value.shape[1], shapes)
    if method == 'discrete':  # rounding to cells has no gradient (the original's .to(int64))
        sampling_locations = sampling_locations.detach()
    if _resolve_backend(backend, value.device) == 'cuda':
        if sampling_locations.dim() == 6:
            sampling_locations = sampling_locations.flatten(3, 4)
            attention_weights = attention_weights.flatten(3, 4)
        return _MSDeformAttnCUDA.apply(value, spatial_shapes, level_start_index,
                                       sampling_locations, attention_weights, counts,
                                       method == 'discrete', deterministic)
    return ms_deform_attn_pytorch(value, shapes, sampling_locations, attention_weights, counts,
                                  method)
