"""CPUAffinityHook: the ranks of a host split the CPUs they share by physical cores, and leave
CPUs alone that a launcher already divided."""
import logging
from types import SimpleNamespace

import torch.multiprocessing as mp

from detr_plugin.engine.hooks import CPUAffinityHook
from detr_plugin.engine.hooks import cpu_affinity_hook
from detr_plugin.engine.hooks.cpu_affinity_hook import parse_cpu_list, split_cpus


def smt_pairs(cpu: int) -> int:
    """A host of 4 physical cores with 2 hyper-threads each: CPU i and i + 4 share core i % 4."""
    return cpu % 4


def test_parse_cpu_list():
    assert parse_cpu_list('0-3,8,10-11\n') == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpu_list('5') == [5]


def test_split_keeps_siblings_together_and_covers_every_cpu_once():
    cpus = range(8)
    assert split_cpus(cpus, 2, 0, smt_pairs) == [0, 1, 4, 5]
    assert split_cpus(cpus, 2, 1, smt_pairs) == [2, 3, 6, 7]
    thirds = [split_cpus(cpus, 3, i, smt_pairs) for i in range(3)]
    assert thirds == [[0, 4], [1, 5], [2, 3, 6, 7]]
    # without SMT data every CPU is its own core
    assert split_cpus([3, 9, 10, 11], 2, 1, lambda cpu: cpu) == [10, 11]


def test_split_into_more_parts_than_cores_is_empty():
    assert split_cpus(range(8), 5, 0, smt_pairs) == []


def _rank(rank, port, seen_by_rank, results):
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=2)
    try:
        bound = []
        cpu_affinity_hook.os.sched_getaffinity = lambda pid: set(seen_by_rank[rank])
        cpu_affinity_hook.os.sched_setaffinity = lambda pid, cpus: bound.append(sorted(cpus))
        cpu_affinity_hook.physical_core = smt_pairs
        runner = SimpleNamespace(logger=logging.getLogger('cpu_affinity_test'))
        CPUAffinityHook().before_train(runner)
        results[rank] = bound
    finally:
        dist.destroy_process_group()


def run_two_ranks(port, seen_by_rank):
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(port, seen_by_rank, results), nprocs=2)
    return [results[0], results[1]]


def test_two_ranks_sharing_a_host_take_half_of_its_cores_each(demo_runs):
    shared = list(range(8))
    assert run_two_ranks(demo_runs.free_port(), [shared, shared]) == [[[0, 1, 4, 5]],
                                                                      [[2, 3, 6, 7]]]


def test_ranks_a_launcher_bound_already_are_left_alone(demo_runs):
    assert run_two_ranks(demo_runs.free_port(), [[0, 1, 4, 5], [2, 3, 6, 7]]) == [[], []]
