"""BatchNorm over the global batch (every process of the job), without host synchronisation.

PyTorch's ``nn.SyncBatchNorm`` drops the statistics of ranks whose input is empty with a boolean
mask, which makes the host wait for the GPU in every layer's forward. RT-DETR R50 has 42
trainable BatchNorms (encoder, decoder input projections): on 2 GPUs those waits made its forward
80% longer (docs/benchmarks.md). A detector's rank always holds at least one image, so here an
empty input is an error and no mask is needed.
What remains is the same algorithm: per layer, one all-gather of (mean, invstd, count) in the
forward and one all-reduce of two per-channel sums in the backward, queued like any other kernel.

On CUDA the statistics, the normalisation and the gradients are PyTorch's fused batch-norm
kernels; elsewhere (gloo on CPU) plain tensor operations compute the same quantities.
"""
from types import SimpleNamespace
from typing import Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _world_size(group) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics are those of the whole global batch.

    Outside distributed training, and in eval mode, it is exactly ``nn.BatchNorm2d``: parameter
    and buffer names are the same, so checkpoints load either way. ``momentum=None`` (a cumulative
    average, which needs the batch count on the host) is not supported.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_group: Optional[dist.ProcessGroup] = None) -> None:
        if momentum is None:
            raise ValueError('SyncBatchNorm2d needs a float momentum (None, the cumulative '
                             'average, would read the batch count on the host every step)')
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W)"""
        world = _world_size(self.process_group)
        if not self.training or world == 1:
            return super().forward(x)
        self._check_input_dim(x)
        if x.numel() == 0:
            raise ValueError(f'SyncBatchNorm2d got an empty input {tuple(x.shape)} in training: '
                             'every rank must hold at least one image')
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
        return _SyncBatchNorm.apply(x, self.weight, self.bias, self.running_mean,
                                    self.running_var, self.eps, self.momentum,
                                    self.process_group, world)

    @classmethod
    def convert(cls, module: nn.Module,
                process_group: Optional[dist.ProcessGroup] = None) -> nn.Module:
        """``module`` with every ``nn.BatchNorm2d`` in it (itself included) replaced by this
        class, sharing its parameters and buffers; returns the module (or its replacement)."""
        if isinstance(module, nn.BatchNorm2d) and not isinstance(module, cls):
            sync = cls(module.num_features, module.eps, module.momentum, module.affine,
                       module.track_running_stats, process_group)
            for name in ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'):
                setattr(sync, name, getattr(module, name))
            sync.train(module.training)
            return sync
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child, process_group))
        return module


class _SyncBatchNorm(torch.autograd.Function):
    """Global-batch normalisation of one rank's (N, C, H, W) input."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                running_mean: Optional[Tensor], running_var: Optional[Tensor], eps: float,
                momentum: float, group, world: int) -> Tensor:
        x = x.contiguous()
        ops = _ops(x)
        channels = x.shape[1]
        mean, invstd = ops.stats(x, eps)  # (C,) each, this rank's
        count = mean.new_full((1,), x.numel() // channels)
        local = torch.cat([mean, invstd, count])  # (2C + 1,)
        gathered = _all_gather(local, group, world).view(world, 2 * channels + 1)
        mean_all, invstd_all, count_all = gathered.split([channels, channels, 1], dim=1)
        counts = count_all.reshape(world)
        # (C,) each, global; updates the running statistics in place (unbiased variance)
        mean, invstd = ops.gather_stats(x, mean_all.contiguous(), invstd_all.contiguous(),
                                        running_mean, running_var, momentum, eps, counts)
        ctx.save_for_backward(x, weight, mean, invstd, counts.to(torch.int32))
        ctx.group = group
        return ops.elemt(x, weight, bias, mean, invstd, eps)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_out = grad_out.contiguous()
        x, weight, mean, invstd, counts = ctx.saved_tensors
        ops = _ops(x)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        # (a None weight or bias never needs a gradient)
        sum_dy, sum_dy_xmu, grad_w, grad_b = ops.backward_reduce(
            grad_out, x, mean, invstd, weight, need_x, need_w, need_b)
        grad_x = None
        if need_x:
            sums = torch.cat([sum_dy, sum_dy_xmu])  # (2C,)
            dist.all_reduce(sums, group=ctx.group)
            sum_dy, sum_dy_xmu = sums.chunk(2)
            grad_x = ops.backward_elemt(grad_out, x, mean, invstd, weight, sum_dy, sum_dy_xmu,
                                        counts)
        return (grad_x, grad_w if need_w else None, grad_b if need_b else None,
                None, None, None, None, None, None)


def _all_gather(local: Tensor, group, world: int) -> Tensor:
    """(n,) on every rank -> (world * n,), rank-major."""
    if dist.get_backend(group) == 'gloo':
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local, group=group)
        return torch.cat(parts)
    out = local.new_empty(world * local.numel())
    dist.all_gather_into_tensor(out, local, group=group)
    return out


def _ops(x: Tensor) -> SimpleNamespace:
    return _CUDA_OPS if x.is_cuda else _REFERENCE_OPS


# PyTorch's fused kernels (CUDA only). Statistics and sums are float32 for 16-bit inputs.
_CUDA_OPS = SimpleNamespace(
    stats=torch.batch_norm_stats,
    gather_stats=torch.batch_norm_gather_stats_with_counts,
    elemt=torch.batch_norm_elemt,
    backward_reduce=torch.batch_norm_backward_reduce,
    backward_elemt=torch.batch_norm_backward_elemt)


def _channel(v: Tensor) -> Tensor:
    """(C,) -> (1, C, 1, 1)"""
    return v.view(1, -1, 1, 1)


def _stats(x: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    var, mean = torch.var_mean(xf, dim=(0, 2, 3), unbiased=False)
    return mean, (var + eps).rsqrt()


def _gather_stats(x, mean_all, invstd_all, running_mean, running_var, momentum, eps, counts):
    """Chan's parallel combination of per-rank (mean, biased variance) weighted by counts."""
    n = counts[:, None]  # (W, 1)
    total = counts.sum()
    mean = (n * mean_all).sum(0) / total
    var_all = invstd_all.pow(-2) - eps
    var = (n * (var_all + (mean_all - mean).pow(2))).sum(0) / total
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
        if running_var is not None:
            unbiased = var * total / (total - 1).clamp(min=1)
            running_var.mul_(1 - momentum).add_(momentum * unbiased.to(running_var.dtype))
    return mean, (var + eps).rsqrt()


def _elemt(x, weight, bias, mean, invstd, eps):
    y = (x.to(mean.dtype) - _channel(mean)) * _channel(invstd)
    if weight is not None:
        y = y * _channel(weight) + _channel(bias)
    return y.to(x.dtype)


def _backward_reduce(grad_out, x, mean, invstd, weight, need_x, need_w, need_b):
    dy = grad_out.to(mean.dtype)
    xmu = x.to(mean.dtype) - _channel(mean)
    sum_dy = dy.sum((0, 2, 3))
    sum_dy_xmu = (dy * xmu).sum((0, 2, 3))
    grad_w = (sum_dy_xmu * invstd).to(weight.dtype) if need_w else None
    grad_b = sum_dy.to(weight.dtype) if need_b else None
    return sum_dy, sum_dy_xmu, grad_w, grad_b


def _backward_elemt(grad_out, x, mean, invstd, weight, sum_dy, sum_dy_xmu, counts):
    total = counts.sum().to(mean.dtype)
    xmu = x.to(mean.dtype) - _channel(mean)
    scale = invstd if weight is None else invstd * weight.to(mean.dtype)
    grad = (grad_out.to(mean.dtype) - _channel(sum_dy / total)
            - xmu * _channel(invstd.pow(2) * sum_dy_xmu / total)) * _channel(scale)
    return grad.to(x.dtype)


_REFERENCE_OPS = SimpleNamespace(stats=_stats, gather_stats=_gather_stats, elemt=_elemt,
                                 backward_reduce=_backward_reduce, backward_elemt=_backward_elemt)
