"""Multi-scale deformable attention (MSDA), the sampling core of Deformable DETR and RT-DETR.

``multi_scale_deformable_attention`` validates its inputs and dispatches to one of two backends:

* ``'cuda'``: our kernels in ``detr_plugin._ext`` (detr_plugin/ops/csrc), with autograd;
* ``'pytorch'``: ``F.grid_sample`` per level, used on CPU, when the extension is missing or fails to
  load (then with a one-time warning, on the first CUDA call), under tracing / ONNX export
  (opset >= 16, where grid_sample exists), and on request.

``backend=None`` picks automatically; the environment variable ``DETR_PLUGIN_MSDA_BACKEND``
(``pytorch`` | ``cuda`` | ``auto``) overrides that automatic choice. Both backends sample like
``grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False)``: a location
``(x, y)`` in [0, 1] is the pixel ``(x * W_l - 0.5, y * H_l - 0.5)``; corners off the map read 0.
"""
import importlib
import os
import warnings
import weakref
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

BACKENDS = ('auto', 'cuda', 'pytorch')
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

# Level layouts already checked, so that the device -> host copy they need happens once per
# spatial_shapes tensor rather than once per layer: id -> (refs, versions, num_value, shapes).
_LAYOUT_CACHE: dict = {}


def level_layout(spatial_shapes: Tensor, level_start_index: Tensor,
                 num_value: int) -> List[Tuple[int, int]]:
    """Checks that the levels tile ``value`` and returns them as ``[(H_l, W_l), ...]``.

    Raises ValueError unless sum(H_l * W_l) == num_value and level_start_index is the exclusive
    cumulative sum of H_l * W_l (the kernels index value with both).
    """
    tracing = torch.jit.is_tracing()
    key = (id(spatial_shapes), id(level_start_index))
    versions = (spatial_shapes._version, level_start_index._version)
    hit = None if tracing else _LAYOUT_CACHE.get(key)
    if (hit is not None and hit[0][0]() is spatial_shapes and hit[0][1]() is level_start_index
            and hit[1] == versions and hit[2] == num_value):
        return hit[3]
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    starts = [int(s) for s in level_start_index.tolist()]
    sizes = [h * w for h, w in shapes]
    if any(h <= 0 or w <= 0 for h, w in shapes):
        raise ValueError(f'spatial_shapes must be positive (H, W) pairs, got {shapes}')
    if sum(sizes) != num_value:
        raise ValueError(f'value has {num_value} tokens but spatial_shapes {shapes} sum to '
                         f'{sum(sizes)}')
    expected_starts = [sum(sizes[:i]) for i in range(len(sizes))]
    if starts != expected_starts:
        raise ValueError(f'level_start_index {starts} does not match spatial_shapes {shapes} '
                         f'(expected {expected_starts})')
    if not tracing:
        if len(_LAYOUT_CACHE) > 64:
            _LAYOUT_CACHE.clear()
        refs = (weakref.ref(spatial_shapes), weakref.ref(level_start_index))
        _LAYOUT_CACHE[key] = (refs, versions, num_value, shapes)
    return shapes


def _check_inputs(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                  sampling_locations: Tensor, attention_weights: Tensor) -> None:
    """Shapes, dtypes and devices (no data access); raises TypeError / ValueError."""
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
    if value.dim() != 4:
        raise ValueError(f'value must be (bs, num_value, heads, dim), got {tuple(value.shape)}')
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError('sampling_locations must be (bs, num_query, heads, levels, points, 2), got '
                         f'{tuple(sampling_locations.shape)}')
    if attention_weights.dim() != 5:
        raise ValueError('attention_weights must be (bs, num_query, heads, levels, points), got '
                         f'{tuple(attention_weights.shape)}')
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f'spatial_shapes must be (levels, 2), got {tuple(spatial_shapes.shape)}')
    if level_start_index.shape != spatial_shapes.shape[:1]:
        raise ValueError(f'level_start_index must be ({spatial_shapes.shape[0]},) like '
                         f'spatial_shapes, got {tuple(level_start_index.shape)}')
    bs, num_query, heads, levels, points, _ = sampling_locations.shape
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
    if levels != spatial_shapes.shape[0] or attention_weights.shape[3] != levels:
        raise ValueError(f'number of levels differs: spatial_shapes {spatial_shapes.shape[0]}, '
                         f'sampling_locations {levels}, attention_weights '
                         f'{attention_weights.shape[3]}')
    if attention_weights.shape[4] != points:
        raise ValueError(f'number of points differs: sampling_locations {points}, '
                         f'attention_weights {attention_weights.shape[4]}')


# -- backends -------------------------------------------------------------------------------------

def ms_deform_attn_pytorch(value: Tensor, shapes: List[Tuple[int, int]], sampling_locations: Tensor,
                           attention_weights: Tensor) -> Tensor:
    """The grid_sample path: shapes as ``[(H_l, W_l), ...]``; returns (bs, num_query, heads * dim)."""
    bs, _, heads, dim = value.shape
    _, num_query, _, levels, points, _ = sampling_locations.shape
    value_levels = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] convention
    output = value.new_zeros(bs * heads, dim, num_query)
    for level, (h, w) in enumerate(shapes):
        # (bs, h*w, heads, dim) -> (bs*heads, dim, h, w)
        feature = value_levels[level].permute(0, 2, 3, 1).reshape(bs * heads, dim, h, w)
        # (bs, num_query, heads, points, 2) -> (bs*heads, num_query, points, 2)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(bs * heads, num_query, points, 2)
        sampled = F.grid_sample(feature, grid, mode='bilinear', padding_mode='zeros',
                                align_corners=False)  # (bs*heads, dim, num_query, points)
        # (bs, num_query, heads, points) -> (bs*heads, 1, num_query, points)
        weight = attention_weights[:, :, :, level].transpose(1, 2).reshape(
            bs * heads, 1, num_query, points)
        output = output + (sampled * weight).sum(-1)
    # (bs*heads, dim, num_query) -> (bs, num_query, heads*dim)
    return output.view(bs, heads * dim, num_query).transpose(1, 2).contiguous()


class _MSDeformAttnCUDA(torch.autograd.Function):
    """Autograd wrapper of the kernels in detr_plugin/ops/csrc (inputs already validated)."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations,
                attention_weights):
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights)
        return _cuda_ext().ms_deform_attn_forward(value, spatial_shapes, level_start_index,
                                                  sampling_locations, attention_weights)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad_value, grad_locations, grad_weights = _cuda_ext().ms_deform_attn_backward(
            *ctx.saved_tensors, grad_output.contiguous())
        return grad_value, None, None, grad_locations, grad_weights


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


def multi_scale_deformable_attention(value: Tensor, spatial_shapes: Tensor,
                                     level_start_index: Tensor, sampling_locations: Tensor,
                                     attention_weights: Tensor,
                                     backend: Optional[str] = None) -> Tensor:
    """Samples each level bilinearly at the given locations and sums with attention weights.

    Args:
        value: (bs, num_value, heads, dim), the levels' tokens concatenated (row-major per level).
        spatial_shapes: (levels, 2) integer, (H_l, W_l) per level; sum(H_l * W_l) == num_value.
        level_start_index: (levels,) integer, first token of each level in value.
        sampling_locations: (bs, num_query, heads, levels, points, 2), (x, y) normalized to [0, 1]
            (outside is allowed: off-map corners read 0).
        attention_weights: (bs, num_query, heads, levels, points).
        backend: None (automatic), 'auto', 'cuda' or 'pytorch'.

    Returns:
        (bs, num_query, heads * dim): for each query and head, the weighted sum over levels and
        points of value sampled at the locations. value, sampling_locations and attention_weights
        must share one floating dtype and one device with the index tensors.
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    shapes = level_layout(spatial_shapes, level_start_index, value.shape[1])
    if _resolve_backend(backend, value.device) == 'cuda':
        return _MSDeformAttnCUDA.apply(value, spatial_shapes, level_start_index, sampling_locations,
                                       attention_weights)
    return ms_deform_attn_pytorch(value, shapes, sampling_locations, attention_weights)
