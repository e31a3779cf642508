"""Compute partitions for the two semi-PD workers: one small interface, one backend per device.

A split gives each worker a compute share: on CPU a number of cores, on GPU a percentage of the
streaming multiprocessors. Shares may overlap (the semi-PD paper's 100/100 lets the device share
itself). A backend checks a split (the error names the valid range) and applies it to the workers
it is given; the scheduler keeps the split in force and its history.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Protocol


class InvalidSplit(ValueError):
    pass


@dataclass(frozen=True)
class Split:
    prefill: int
    decode: int

    def __str__(self) -> str:
        return f"{self.prefill},{self.decode}"


def parse_split(text: str) -> Split:
    parts = str(text).split(",")
    try:
        prefill, decode = (int(p) for p in parts)
    except ValueError:
        raise InvalidSplit(f"split {text!r} is not two integers 'P,D' (for example 1,1)") from None
    return Split(prefill, decode)


@dataclass
class Workers:
    """What a backend may act on: the worker processes and a way to set their thread counts."""

    pids: Callable[[], dict[str, int]]  # role ("prefill" | "decode") -> pid
    set_threads: Callable[[str, int], None]


class PartitionBackend(Protocol):
    name: str
    unit: str

    def check(self, split: Split) -> None:
        """Raise InvalidSplit, naming the valid range, if the split cannot be applied."""

    def apply(self, split: Split, workers: Workers) -> dict:
        """Apply the split to the workers; return what is now in force (for the history)."""


class CpuCores:
    """CPU cores per worker: the prefill worker takes the first P cores, decode the last D.

    Affinity is set on every thread of each worker process at once (the kernel moves running
    threads immediately); each worker sets its own thread count at its next step boundary.
    """

    name = "cpu"
    unit = "cores"

    def __init__(self, cores: list[int] | None = None):
        self.cores = sorted(cores if cores is not None else os.sched_getaffinity(0))

    def valid_range(self) -> str:
        n = len(self.cores)
        return f"each share is a whole number of cores from 1 to {n} (this machine has {n} usable: {self.cores})"

    def check(self, split: Split) -> None:
        n = len(self.cores)
        for role, value in (("prefill", split.prefill), ("decode", split.decode)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= n:
                raise InvalidSplit(f"{role} share {value!r} is out of range: {self.valid_range()}")

    def core_sets(self, split: Split) -> dict[str, list[int]]:
        return {"prefill": self.cores[: split.prefill], "decode": self.cores[len(self.cores) - split.decode:]}

    def apply(self, split: Split, workers: Workers) -> dict:
        self.check(split)
        sets = self.core_sets(split)
        for role, pid in workers.pids().items():
            pin_process(pid, sets[role])
            workers.set_threads(role, len(sets[role]))
        return {"cores": sets}


def pin_process(pid: int, cores: list[int]) -> None:
    """Set the CPU affinity of every thread of a process."""
    for tid in os.listdir(f"/proc/{pid}/task"):
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
