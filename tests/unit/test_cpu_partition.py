"""CPU partitions on real processes: each worker and the front end pinned where the split says."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine.partition import InvalidSplit, Split, Workers
from engine.partition.cpu import CpuCores, process_affinity

CORES = sorted(os.sched_getaffinity(0))


@pytest.fixture
def sleepers():
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(4)]
    yield [p.pid for p in procs]
    for p in procs:
        p.kill()
        p.wait()


def workers(pids, threads):
    return Workers(pids=lambda: {"prefill": pids[0], "decode": pids[1]},
                   set_threads=lambda role, n: threads.__setitem__(role, n),
                   frontend_pids=lambda: pids[2:])


@pytest.mark.skipif(len(CORES) < 2, reason="disjoint partitions need two cores")
@pytest.mark.parametrize("frontend", ["prefill", "decode", "all"])
def test_split_pins_workers_and_the_front_end(sleepers, frontend):
    cpu, threads = CpuCores(frontend=frontend), {}
    record = cpu.apply(Split(1, 1), workers(sleepers, threads))
    prefill, decode = {CORES[0]}, {CORES[-1]}
    assert process_affinity(sleepers[0]) == prefill and process_affinity(sleepers[1]) == decode
    expected = {"prefill": prefill, "decode": decode, "all": set(CORES)}[frontend]
    assert all(process_affinity(pid) == expected for pid in sleepers[2:])
    assert threads == {"prefill": 1, "decode": 1} and record["cores"]["frontend"] == sorted(expected)
    # unified (each phase the whole device): every process may run anywhere
    cpu.apply(Split(len(CORES), len(CORES)), workers(sleepers, threads))
    assert all(process_affinity(pid) == set(CORES) for pid in sleepers)


def test_a_process_that_is_gone_is_skipped_and_bad_choices_are_named(sleepers):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    CpuCores().apply(Split(1, 1), workers([gone.pid, *sleepers[1:]], {}))  # no error
    with pytest.raises(InvalidSplit, match="valid are prefill, decode, all"):
        CpuCores(frontend="gpu")


@pytest.mark.parametrize("split,message", [
    (Split(1.0, 1), "prefill share 1.0 is not a whole number of cores"),
    (Split(1, "2"), "decode share '2' is not a whole number of cores"),
    (Split(len(CORES) + 1, 1), f"prefill share {len(CORES) + 1} is out of range"),
    (Split(1, 0), "decode share 0 is out of range"),
])
def test_a_bad_share_is_named_with_what_is_wrong_and_the_valid_range(split, message):
    with pytest.raises(InvalidSplit, match=message) as error:
        CpuCores().check(split)
    assert f"from 1 to {len(CORES)}" in str(error.value)
