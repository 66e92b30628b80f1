"""Gives each training process of a host its own share of the host's CPU cores."""
import os
import socket
from typing import Callable, Dict, List, Sequence

from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import Hook

from detr_plugin.registry import HOOKS


def parse_cpu_list(text: str) -> List[int]:
    """Linux's CPU list format ('0-3,8,10-11') -> [0, 1, 2, 3, 8, 10, 11]."""
    cpus: List[int] = []
    for part in text.strip().split(','):
        first, _, last = part.partition('-')
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def physical_core(cpu: int) -> int:
    """The lowest logical CPU on ``cpu``'s physical core (``cpu`` itself without SMT data)."""
    path = f'/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list'
    try:
        with open(path) as f:
            return min(parse_cpu_list(f.read()))
    except (OSError, ValueError):
        return cpu


def split_cpus(cpus: Sequence[int], parts: int, index: int,
               core_of: Callable[[int], int]) -> List[int]:
    """Share ``index`` of ``parts`` of ``cpus``: whole physical cores (``core_of``: CPU -> its
    core; hyper-thread siblings stay together), cut into ``parts`` contiguous runs of as equal
    length as possible. Empty when there are fewer physical cores than parts."""
    cores: Dict[int, List[int]] = {}
    for cpu in sorted(cpus):
        cores.setdefault(core_of(cpu), []).append(cpu)
    groups = sorted(cores.values())
    if len(groups) < parts:
        return []
    start, stop = len(groups) * index // parts, len(groups) * (index + 1) // parts
    return sorted(cpu for group in groups[start:stop] for cpu in group)


@HOOKS.register_module()
class CPUAffinityHook(Hook):
    """Binds every rank to its own part of the CPUs that the ranks of its host share.

    A DDP step waits at each collective for the slowest rank, and the detectors' steps are
    host-bound (RT-DETR R50 launches about 3,100 kernels per iteration): when all ranks of a host
    may run anywhere, one rank's main thread can end up beside the data workers and every rank
    runs at its pace. In profiled 2-GPU RT-DETR steps one rank's host operations took
    1.3-1.9x as long as the other's; with this hook the 2-GPU step was 10-38% shorter
    (docs/benchmarks.md, session 5).

    At ``before_train`` (before the data workers start, which inherit the binding) the ranks of a
    host that see the same CPU set split it by physical cores, in rank order. Ranks that a launcher
    already bound to distinct CPUs (``srun --cpu-bind``, ``numactl``, ``taskset``) are left alone,
    as are single-process runs and systems without ``os.sched_setaffinity`` (macOS, Windows).
    Threads started before the hook (NCCL's) keep their CPUs.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        if get_world_size() == 1 or not hasattr(os, 'sched_setaffinity'):
            return
        host, mine = socket.gethostname(), sorted(os.sched_getaffinity(0))
        peers = all_gather_object((host, mine))  # every rank's (host, CPUs), in rank order
        sharing = [rank for rank, peer in enumerate(peers) if peer == (host, mine)]
        share = []
        if len(sharing) > 1:
            share = split_cpus(mine, len(sharing), sharing.index(get_rank()), physical_core)
        if not share:
            runner.logger.info(f'CPUAffinityHook: CPUs left as they are ({len(mine)} CPUs, '
                               f'shared by {len(sharing)} rank(s) of this host)')
            return
        os.sched_setaffinity(0, share)
        runner.logger.info(f'CPUAffinityHook: rank {get_rank()} bound to CPUs {share} '
                           f'({len(sharing)} ranks share the {len(mine)} CPUs of {host})')
