"""SyncBatchNorm2d: two ranks holding parts of a batch normalise it as ``nn.BatchNorm2d`` does the
whole batch (outputs, running statistics, gradients), in float64 on CPU (gloo) and on 2 GPUs
(NCCL, where it also must not make the host wait for the GPU); the CUDA kernels it calls agree with
the plain tensor operations the CPU path uses."""

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from detr_plugin.models.layers import ConvNormAct
from detr_plugin.models.layers.sync_batch_norm import (_CUDA_OPS, _REFERENCE_OPS,
                                                       SyncBatchNorm2d)

C, H, W = 3, 4, 5
SPLIT = (3, 2)   # images on rank 0 and rank 1: unequal on purpose
MOMENTUM = 0.3


def global_batch(dtype=torch.float64):
    """The same random batch, affine parameters, running statistics and output weights on
    every process (drawn in float64, then cast: each dtype would draw different numbers)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sum(SPLIT), C, H, W, generator=g, dtype=torch.float64) * 3 + 2
    grad_weights = torch.randn(x.shape, generator=g, dtype=torch.float64)
    weight = torch.rand(C, generator=g, dtype=torch.float64) + 0.5
    bias = torch.randn(C, generator=g, dtype=torch.float64)
    running = (torch.rand(C, generator=g, dtype=torch.float64),
               torch.rand(C, generator=g, dtype=torch.float64) + 1)
    return tuple(t.to(dtype) for t in (x, grad_weights, weight, bias)) + (
        tuple(t.to(dtype) for t in running),)


def make_norm(cls, weight, bias, running, device):
    norm = cls(C, momentum=MOMENTUM).to(device=device, dtype=weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        norm.bias.copy_(bias)
        norm.running_mean.copy_(running[0])
        norm.running_var.copy_(running[1])
    return norm


def _rank(rank, port, backend, results):
    import torch.distributed as dist
    dist.init_process_group(backend, init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=2)
    try:
        device = torch.device('cuda', rank) if backend == 'nccl' else torch.device('cpu')
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        dtype = torch.float32 if device.type == 'cuda' else torch.float64
        x, grad_weights, weight, bias, running = global_batch(dtype)
        start = sum(SPLIT[:rank])
        part = slice(start, start + SPLIT[rank])
        norm = make_norm(SyncBatchNorm2d, weight, bias, running, device)
        x_local = x[part].to(device).requires_grad_()
        grad_local = grad_weights[part].to(device)
        if device.type == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode('error')   # any host wait below raises
        out = norm(x_local)
        (out * grad_local).sum().backward()
        if device.type == 'cuda':
            torch.cuda.set_sync_debug_mode('default')
        results[rank] = {name: t.detach().cpu().double() for name, t in dict(
            out=out, grad_x=x_local.grad, grad_weight=norm.weight.grad,
            grad_bias=norm.bias.grad, running_mean=norm.running_mean,
            running_var=norm.running_var).items()}
        results[(rank, 'batches')] = int(norm.num_batches_tracked)
        try:
            norm(x_local[:0])
        except ValueError as e:
            results[(rank, 'empty')] = str(e)
    finally:
        dist.destroy_process_group()


def check_against_whole_batch(backend, port, rtol, atol):
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(port, backend, results), nprocs=2)
    x, grad_weights, weight, bias, running = global_batch(torch.float64)
    reference = make_norm(nn.BatchNorm2d, weight, bias, running, 'cpu')
    x.requires_grad_()
    out = reference(x)
    (out * grad_weights).sum().backward()
    ranks = [results[0], results[1]]
    close = dict(rtol=rtol, atol=atol)
    torch.testing.assert_close(torch.cat([r['out'] for r in ranks]), out.detach(), **close)
    torch.testing.assert_close(torch.cat([r['grad_x'] for r in ranks]), x.grad, **close)
    # each rank's parameter gradient covers its images; DDP then sums (averages) them
    torch.testing.assert_close(ranks[0]['grad_weight'] + ranks[1]['grad_weight'],
                               reference.weight.grad, **close)
    torch.testing.assert_close(ranks[0]['grad_bias'] + ranks[1]['grad_bias'],
                               reference.bias.grad, **close)
    for r in ranks:
        torch.testing.assert_close(r['running_mean'], reference.running_mean, **close)
        torch.testing.assert_close(r['running_var'], reference.running_var, **close)
    assert results[(0, 'batches')] == results[(1, 'batches')] == 1
    assert 'every rank must hold at least one image' in results[(0, 'empty')]


def test_two_cpu_ranks_match_batch_norm_over_the_whole_batch(demo_runs):
    check_against_whole_batch('gloo', demo_runs.free_port(), rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs 2 GPUs')
def test_two_gpus_match_the_whole_batch_without_host_waits(demo_runs):
    check_against_whole_batch('nccl', demo_runs.free_port(), rtol=1e-5, atol=1e-5)


def test_single_process_and_eval_are_plain_batch_norm():
    x, _, weight, bias, running = global_batch()
    ours = make_norm(SyncBatchNorm2d, weight, bias, running, 'cpu')
    plain = make_norm(nn.BatchNorm2d, weight, bias, running, 'cpu')
    for mode in (True, False):
        ours.train(mode)
        plain.train(mode)
        torch.testing.assert_close(ours(x), plain(x), rtol=0, atol=0)
        torch.testing.assert_close(ours.running_var, plain.running_var, rtol=0, atol=0)


def test_convert_shares_parameters_and_keeps_checkpoint_keys():
    block = nn.Sequential(ConvNormAct(4, 8, 3), nn.BatchNorm2d(8),
                          nn.Sequential(ConvNormAct(8, 8, 1)))
    block.eval()
    before = dict(block.named_parameters())
    keys = list(block.state_dict())
    converted = SyncBatchNorm2d.convert(block)
    assert converted is block
    norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 3 and all(type(m) is SyncBatchNorm2d for m in norms)
    assert all(not m.training for m in norms)
    assert list(block.state_dict()) == keys
    assert all(p is before[name] for name, p in block.named_parameters())
    single = SyncBatchNorm2d.convert(nn.BatchNorm2d(2))
    assert type(single) is SyncBatchNorm2d
    with pytest.raises(ValueError, match='float momentum'):
        SyncBatchNorm2d.convert(nn.BatchNorm2d(2, momentum=None))


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_cuda_kernels_agree_with_the_reference_operations(dtype):
    """The CPU path's plain operations compute what PyTorch's fused CUDA kernels compute, so the
    CPU test above also checks the algorithm the GPUs run."""
    g = torch.Generator(device='cuda').manual_seed(0)
    x = (torch.randn(4, C, H, W, generator=g, device='cuda') * 2 + 1).to(dtype)
    dy = torch.randn(x.shape, generator=g, device='cuda').to(dtype)
    weight, bias = torch.rand(C, device='cuda') + 0.5, torch.randn(C, device='cuda')
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    cuda_stats = _CUDA_OPS.stats(x, 1e-5)
    ref_stats = _REFERENCE_OPS.stats(x, 1e-5)
    for a, b in zip(cuda_stats, ref_stats):
        torch.testing.assert_close(a, b, **tol)
    # two "ranks": this batch's statistics and those of half of it
    half_stats = _REFERENCE_OPS.stats(x[:2], 1e-5)
    mean_all = torch.stack([ref_stats[0], half_stats[0]])
    invstd_all = torch.stack([ref_stats[1], half_stats[1]])
    counts = torch.tensor([4.0 * H * W, 2.0 * H * W], device='cuda')
    gathered, runs = [], []
    for ops in (_CUDA_OPS, _REFERENCE_OPS):
        running = torch.zeros(C, device='cuda'), torch.ones(C, device='cuda')
        gathered.append(ops.gather_stats(x, mean_all, invstd_all, *running, 0.1, 1e-5, counts))
        runs.append(running)
    for a, b in zip(gathered[0] + runs[0], gathered[1] + runs[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    mean, invstd = gathered[1]
    torch.testing.assert_close(_CUDA_OPS.elemt(x, weight, bias, mean, invstd, 1e-5),
                               _REFERENCE_OPS.elemt(x, weight, bias, mean, invstd, 1e-5), **tol)
    reduced = [ops.backward_reduce(dy, x, mean, invstd, weight, True, True, True)
               for ops in (_CUDA_OPS, _REFERENCE_OPS)]
    for a, b in zip(*reduced):   # sums over 80 products: bf16 inputs round each to 2^-8
        torch.testing.assert_close(a, b, **(dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32
                                            else dict(rtol=2e-2, atol=2e-2)))
    sum_dy, sum_dy_xmu = reduced[1][:2]
    int_counts = counts.to(torch.int32)
    torch.testing.assert_close(
        _CUDA_OPS.backward_elemt(dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu, int_counts),
        _REFERENCE_OPS.backward_elemt(dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu,
                                      int_counts), **tol)
