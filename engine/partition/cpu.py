"""CPU cores per worker, by affinity and thread count, changed live."""

from __future__ import annotations

import os

from engine.partition import InvalidSplit, Split, Workers, WorkerStart


class CpuCores:
    """CPU cores per worker: the prefill worker takes the first P cores, decode the last D.

    Affinity is set on every thread of each worker process at once (the kernel moves running
    threads immediately); each worker sets its own thread count at its next step boundary.

    Optionally (`lend`), a worker that will stay idle during the other's next step lends it its
    cores for that step: the owner knows, at every step boundary, whether the other worker can
    start work before this step ends, so the cores are never oversubscribed (overlapping splits
    on CPU are: OpenMP threads that share a core wait on each other at every barrier).


    The front end (SGLang's HTTP + tokenizer process and its detokenizer) is placed with the
    split: on all cores (`frontend="all"`, the default), on the prefill worker's or on decode's;
    in unified mode on all. Measured at split 1,1: on the prefill core the front end delays
    prefill, which is what binds there (docs/engine-goodput.md).
    """

    name = "cpu"
    unit = "cores"
    FRONTEND_CHOICES = ("prefill", "decode", "all")

    def __init__(self, cores: list[int] | None = None, frontend: str = "all"):
        if frontend not in self.FRONTEND_CHOICES:
            raise InvalidSplit(f"front-end cores {frontend!r}: valid are {', '.join(self.FRONTEND_CHOICES)}")
        self.frontend = frontend
        self.cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
        self.sets: dict[str, list[int]] = {}
        self.lent: dict[str, bool] = {}

    @property
    def units(self) -> int:
        return len(self.cores)

    def valid_range(self) -> str:
        n = len(self.cores)
        return f"each share is a whole number of cores from 1 to {n} (this machine has {n} usable: {self.cores})"

    def check(self, split: Split) -> None:
        n = len(self.cores)
        for role, value in (("prefill", split.prefill), ("decode", split.decode)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidSplit(f"{role} share {value!r} is not a whole number of cores: {self.valid_range()}")
            if not 1 <= value <= n:
                raise InvalidSplit(f"{role} share {value!r} is out of range: {self.valid_range()}")

    def core_sets(self, split: Split) -> dict[str, list[int]]:
        sets = {"prefill": self.cores[: split.prefill], "decode": self.cores[len(self.cores) - split.decode:]}
        sets["frontend"] = self.cores if self.frontend == "all" else sets[self.frontend]
        return sets

    def apply(self, split: Split, workers: Workers) -> dict:
        self.check(split)
        self.sets = self.core_sets(split)
        self.lent = {}
        for role, pid in workers.pids().items():
            pin_process(pid, self.sets[role])
            workers.set_threads(role, len(self.sets[role]))
        for pid in workers.frontend_pids() if workers.frontend_pids else ():
            pin_process(pid, self.sets["frontend"])
        return {"cores": self.sets}

    def worker_start(self, split: Split) -> WorkerStart:
        return WorkerStart(split.prefill, cores=tuple(self.core_sets(split)["prefill"]))

    def cores_of(self, role: str) -> list[int]:
        """The cores `role` runs on now (its own, or with the other's while lent)."""
        if self.lent.get(role, False):
            return sorted(set(self.sets["prefill"]) | set(self.sets["decode"]))
        return self.sets[role]

    def lend(self, role: str, lent: bool, workers: Workers) -> None:
        """Give `role` the other worker's cores as well for its next step (or take them back)."""
        if self.lent.get(role, False) == lent:
            return
        self.lent[role] = lent
        cores = self.cores_of(role)
        pin_process(workers.pids()[role], cores)
        workers.set_threads(role, len(cores))


def pin_process(pid: int, cores: list[int]) -> None:
    """Set the CPU affinity of every thread of a process."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return  # the process ended: nothing to pin
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), cores)
        except ProcessLookupError:
            pass  # the thread ended meanwhile


def process_affinity(pid: int) -> set[int]:
    """The union of the CPU sets of a process's threads, read back from the OS."""
    cores: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            cores |= os.sched_getaffinity(int(tid))
        except ProcessLookupError:
            pass
    return cores
