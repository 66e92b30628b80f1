"""The convolutional front of a training step (backbone and encoder) replayed as CUDA graphs.

A training step of an RT-DETR-like detector launches thousands of small kernels, and on a fast GPU
the host launching them is the bound. The backbone and the hybrid encoder do the same work for
every batch of one shape, so their forward and their backward can each be captured once per input
shape and replayed with one launch. Multi-scale training gives a handful of shapes; all of them
share one memory pool and one set of input, output and gradient buffers, so that the graphs hold
about the activations of the largest shape, as eager training does.
"""
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

Key = Tuple  # (input shape, dtype, channels-last, autocast dtype or None)


class Capture(NamedTuple):
    """One input shape's two graphs and the buffer views they read and write."""
    forward: 'torch.cuda.CUDAGraph'
    backward: 'torch.cuda.CUDAGraph'
    inputs: Tensor                    # (bs, 3, H, W) view of the shared input buffer
    outputs: Tuple[Tensor, ...]       # the stage's outputs, views of a shared buffer
    grad_outputs: Tuple[Tensor, ...]  # their gradients, read by the backward graph
    param_grads: Tuple[Optional[Tensor], ...]  # per trainable parameter; None: unused


class SharedBuffer:
    """A flat device buffer handed out as views; it only grows (earlier views then go stale)."""

    def __init__(self) -> None:
        self.flat: Optional[Tensor] = None

    def fits(self, numel: int) -> bool:
        return self.flat is not None and self.flat.numel() >= numel

    def grow(self, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        self.flat = None  # freed first: the old and the new one are never both held
        self.flat = torch.empty(numel, dtype=dtype, device=device)

    def views(self, shapes: Sequence[torch.Size]) -> List[Tensor]:
        """Consecutive views, one per shape, each written in place later (single-output views:
        autograd forbids in-place writes to the outputs of ``split``)."""
        views, start = [], 0
        for shape in shapes:
            views.append(self.flat.narrow(0, start, shape.numel()).view(shape))
            start += shape.numel()
        return views


class Spec(NamedTuple):
    """Shapes and dtypes of a list of tensors."""
    shapes: Tuple[torch.Size, ...]
    dtypes: Tuple[torch.dtype, ...]

    @classmethod
    def of(cls, tensors: Sequence[Tensor]) -> 'Spec':
        return cls(tuple(t.shape for t in tensors), tuple(t.dtype for t in tensors))


class TrainingGraphs:
    """Runs ``modules`` (applied in order to one ``(bs, 3, H, W)`` batch; the last returns a
    tuple of tensors) in a CUDA training step as two graphs per input shape: the forward, and the
    backward from the outputs' gradients to the trainable parameters' gradients.

    The first step at a new shape runs the modules once eagerly on a side stream (cuDNN's
    autotuner and lazy initialisation must not happen inside a capture; BatchNorm statistics are
    restored afterwards), then captures both graphs; every step at that shape, the first
    included, copies the batch in and replays them. Parameters get the eager gradients (``None``
    for an unused one, fresh tensors each step) and BatchNorm the eager updates. Anything but a
    CUDA training step with gradients (evaluation, the CPU, ``torch.no_grad``) runs eagerly.

    Not an ``nn.Module``: it holds graphs and buffers, no parameters, and a deep copy (EMA's copy
    of the model) starts empty. Graphs are captured again when the trainable parameters change
    (moved, replaced, frozen) or a larger shape outgrows the shared buffers.

    Args:
        max_shapes: captures kept; further shapes run eagerly (bounded memory whatever sizes
            the data has).
    """

    def __init__(self, max_shapes: int = 16) -> None:
        self.max_shapes = max_shapes
        self.captures: Dict[Key, Capture] = {}
        self.param_addresses: Tuple[int, ...] = ()  # of the parameters the graphs were made for
        self.pool = None
        self.buffers: Dict[Tuple[str, torch.dtype], SharedBuffer] = {}

    def __deepcopy__(self, memo) -> 'TrainingGraphs':
        return TrainingGraphs(self.max_shapes)

    def __call__(self, modules: Sequence[nn.Module], inputs: Tensor) -> Tuple[Tensor, ...]:
        """(bs, 3, H, W) -> the last module's outputs."""
        if not (inputs.is_cuda and modules[0].training and torch.is_grad_enabled()
                and not inputs.requires_grad):
            return run(modules, inputs)
        named = [{n: p for n, p in m.named_parameters() if p.requires_grad} for m in modules]
        params = flatten(named)
        addresses = tuple(p.data_ptr() for p in params)
        if addresses != self.param_addresses:  # moved, replaced or (un)frozen: capture again
            self.drop_captures()
            self.param_addresses = addresses
        key = (tuple(inputs.shape), inputs.dtype, is_channels_last(inputs), autocast_dtype())
        capture = self.captures.get(key)
        if capture is None:
            if len(self.captures) >= self.max_shapes:
                return run(modules, inputs)
            capture = self.capture(modules, named, inputs, key)
        return ReplayStage.apply(capture, inputs, *params)

    def capture(self, modules: Sequence[nn.Module], named: List[Dict[str, Tensor]],
                inputs: Tensor, key: Key) -> Capture:
        """Captures both graphs for ``inputs``' key; ``named``: per module, its trainable
        parameters by name."""
        check_capturable(modules)
        outputs, used = warm_up(modules, named, inputs, key[3])
        # The graphs differentiate fresh leaves that share the parameters' memory: a parameter's
        # own gradient accumulator may outlive an earlier step (kept by a tensor of its graph)
        # with that step's stream, and backward would then join that stream into the capture.
        aliases = leaf_aliases(named)
        used_params = [p for p, u in zip(flatten(aliases), used) if u]
        for name, spec in (('inputs', Spec.of([inputs])), ('outputs', outputs),
                           ('grad_outputs', outputs), ('param_grads', Spec.of(used_params))):
            self.reserve(name, spec, inputs.device)
        static_inputs = self.views('inputs', Spec.of([inputs]))[0]
        if key[2]:  # the batch's channels-last layout, so that the stage runs as in eager mode
            n, c, h, w = inputs.shape
            static_inputs = static_inputs.view(n, h, w, c).permute(0, 3, 1, 2)
        with torch.no_grad():
            static_inputs.copy_(inputs)
        out_views, grad_views = self.views('outputs', outputs), self.views('grad_outputs', outputs)
        param_views = self.views('param_grads', Spec.of(used_params))
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        forward, backward = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(forward, pool=self.pool, capture_error_mode='thread_local'):
            with autocast_like(key[3]):
                results = run(modules, static_inputs, aliases)
            with torch.no_grad():  # the buffers stay plain tensors, outside autograd
                torch._foreach_copy_(out_views, list(results))
        with torch.cuda.graph(backward, pool=self.pool, capture_error_mode='thread_local'):
            grads = torch.autograd.grad(results, used_params, grad_outputs=grad_views)
            with torch.no_grad():
                torch._foreach_copy_(param_views, list(grads))
        per_param = iter(param_views)
        capture = Capture(forward, backward, static_inputs, tuple(out_views), tuple(grad_views),
                          tuple(next(per_param) if u else None for u in used))
        self.captures[key] = capture
        return capture

    def drop_captures(self) -> None:
        """Forgets every graph, and their memory pool: CUDA frees a pool with its last graph, so
        the next capture takes a new one (graphs a pending backward still holds keep theirs)."""
        self.captures.clear()
        self.pool = None

    def reserve(self, name: str, spec: Spec, device: torch.device) -> None:
        """Makes the (name, dtype) buffers hold ``spec``'s tensors; growing one drops the
        graphs (they read the old one)."""
        for dtype in set(spec.dtypes):
            buffer = self.buffers.setdefault((name, dtype), SharedBuffer())
            numel = sum(s.numel() for s, d in zip(spec.shapes, spec.dtypes) if d == dtype)
            if not buffer.fits(numel):
                self.drop_captures()
                buffer.grow(numel, dtype, device)

    def views(self, name: str, spec: Spec) -> List[Tensor]:
        """One view per tensor of ``spec``, in order, each in its dtype's (name, dtype) buffer."""
        by_dtype = {d: self.buffers[name, d].views([s for s, e in zip(spec.shapes, spec.dtypes)
                                                     if e == d])
                    for d in set(spec.dtypes)}
        taken = {d: iter(v) for d, v in by_dtype.items()}
        return [next(taken[d]) for d in spec.dtypes]


class ReplayStage(torch.autograd.Function):
    """The captured stage as one autograd node: forward and backward replay its graphs."""

    @staticmethod
    def forward(ctx, capture: Capture, inputs: Tensor, *params: Tensor) -> Tuple[Tensor, ...]:
        if capture.inputs.data_ptr() != inputs.data_ptr():
            capture.inputs.copy_(inputs)
        capture.forward.replay()
        ctx.capture = capture
        return tuple(o.detach() for o in capture.outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Tensor) -> Tuple[Optional[Tensor], ...]:
        capture = ctx.capture
        for view, grad in zip(capture.grad_outputs, grads):
            view.copy_(grad)
        capture.backward.replay()
        # fresh tensors: a parameter's .grad must not alias a buffer the next replay rewrites
        fresh = [g.clone() if g is not None else None for g in capture.param_grads]
        return (None, None, *fresh)


def run(modules: Sequence[nn.Module], inputs: Tensor,
        params: Optional[List[Dict[str, Tensor]]] = None) -> Tuple[Tensor, ...]:
    """The modules applied in order; ``params``: per module, tensors to use in place of its
    parameters of those names."""
    for i, module in enumerate(modules):
        inputs = module(inputs) if params is None else \
            torch.func.functional_call(module, params[i], (inputs,))
    if not isinstance(inputs, (tuple, list)):
        raise TypeError(f'TrainingGraphs: the last module ({type(modules[-1]).__name__}) must '
                        f'return a tuple or list of tensors, got {type(inputs).__name__}')
    return tuple(inputs)


def autocast_dtype() -> Optional[torch.dtype]:
    return torch.get_autocast_dtype('cuda') if torch.is_autocast_enabled('cuda') else None


def autocast_like(dtype: Optional[torch.dtype]) -> torch.autocast:
    """Autocast as the step runs it, without the weight-cast cache (graphs cannot keep it)."""
    return torch.autocast('cuda', dtype=dtype or torch.float32, enabled=dtype is not None,
                          cache_enabled=False)


def leaf_aliases(named: List[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
    """Per module, new leaf tensors requiring gradients that share its parameters' memory."""
    return [{n: p.detach().requires_grad_() for n, p in per_module.items()}
            for per_module in named]


def flatten(named: List[Dict[str, Tensor]]) -> List[Tensor]:
    return [p for per_module in named for p in per_module.values()]


def warm_up(modules: Sequence[nn.Module], named: List[Dict[str, Tensor]], inputs: Tensor,
            dtype: Optional[torch.dtype]) -> Tuple[Spec, Tuple[bool, ...]]:
    """One eager forward and backward on a side stream, with every buffer (BatchNorm's
    statistics) restored after it: the outputs' spec and, per trainable parameter (``named``'s
    order), whether they use it."""
    buffers = [b for m in modules for b in m.buffers()]
    saved = [b.clone() for b in buffers]
    aliases = leaf_aliases(named)
    params = flatten(aliases)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        with autocast_like(dtype):
            outputs = run(modules, inputs, aliases)
        if not all(o.requires_grad for o in outputs):
            raise ValueError('cuda_graph=True: every output of the backbone / encoder must '
                             'depend on a trainable parameter')
        grads = torch.autograd.grad(outputs, params, [torch.ones_like(o) for o in outputs],
                                    allow_unused=True)
        if buffers:
            torch._foreach_copy_(buffers, saved)
    torch.cuda.current_stream().wait_stream(stream)
    return Spec.of(outputs), tuple(g is not None for g in grads)


def is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() \
        and x.is_contiguous(memory_format=torch.channels_last)


def check_capturable(modules: Sequence[nn.Module]) -> None:
    """A process group's collective inside a graph (synchronised BatchNorm across processes)
    is not supported here."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1
    if distributed and any(isinstance(m, nn.SyncBatchNorm) or 'SyncBatchNorm' in type(m).__name__
                           for module in modules for m in module.modules()):
        raise ValueError('cuda_graph=True: the backbone / encoder has synchronised BatchNorm '
                         'across processes, which a CUDA graph cannot capture here; set '
                         'sync_bn=False or cuda_graph=False')
