"""All-reduce bandwidth between the processes of one job: what DDP's gradient all-reduce can
reach on this machine, and so how much of a training step it must cost.

    torchrun --nproc_per_node 2 tools/analysis/benchmark_allreduce.py [--sizes-mb 1 16 64 170]
    NCCL_DEBUG=INFO ...   (NCCL then logs the transport it chose: P2P, SHM or NET)

Rank 0 prints, per size, the median time of ``--repeats`` float32 all-reduces and the bus
bandwidth: size x 2 (n - 1) / n / time, the bytes each GPU sends and receives in a ring all-reduce
(nccl-tests' "busbw"), comparable across process counts.
"""
import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--sizes-mb', type=float, nargs='+', default=[1, 16, 64, 170])
    p.add_argument('--repeats', type=int, default=20)
    p.add_argument('--backend', default='nccl' if torch.cuda.is_available() else 'gloo')
    return p.parse_args()


def time_all_reduce(tensor: torch.Tensor, repeats: int) -> float:
    """Median seconds of one all-reduce, each timed from a barrier to its completion."""
    times = []
    for _ in range(repeats + 2):   # the first two set up NCCL's channels and buffers
        dist.barrier()
        if tensor.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        dist.all_reduce(tensor)
        if tensor.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def main():
    args = parse_args()
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device('cpu')
    if args.backend == 'nccl':
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
        torch.cuda.set_device(device)
    if rank == 0:
        print(f'all-reduce, {world} processes, backend {args.backend}, float32, '
              f'median of {args.repeats}')
        print(f'{"MB":>8} {"ms":>9} {"bus GB/s":>9}')
    for size_mb in args.sizes_mb:
        tensor = torch.ones(int(size_mb * 2**20) // 4, device=device)
        seconds = time_all_reduce(tensor, args.repeats)
        expected = float(world)
        if tensor[0].item() != expected ** (args.repeats + 2):
            raise RuntimeError(f'wrong all-reduce result {tensor[0].item()}')
        bus = tensor.numel() * 4 * 2 * (world - 1) / world / seconds / 1e9
        if rank == 0:
            print(f'{size_mb:8.1f} {seconds * 1e3:9.3f} {bus:9.1f}', flush=True)
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
