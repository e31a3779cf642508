"""Compute partitions for the two semi-PD workers: one small interface, one backend per device.

Backends: `cpu` (cores by affinity and thread count, live; engine/partition/cpu.py), and for
GPUs `mps` and `green_contexts` for the two-process engine, `sm_groups` for SGLang's PD
multiplexing (none verified on hardware).

A split gives each worker a compute share: on CPU a number of cores, on GPU a percentage of the
streaming multiprocessors. Shares may overlap (the semi-PD paper's 100/100 lets the device share
itself). A backend checks a split (the error names the valid range) and applies it to the workers
it is given; the scheduler keeps the split in force and its history.
"""

from __future__ import annotations

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
    """What a backend may act on, supplied by the engine. Backends use the callbacks they need."""

    pids: Callable[[], dict[str, int]]  # role ("prefill" | "decode") -> pid
    set_threads: Callable[[str, int], None]
    # green_contexts: this role's worker moves to its own stream of this split at its next batch
    # boundary, after the side that gave up SMs has released them (green_contexts.OwnerStreams).
    use_stream: Callable[[str, Split], None] | None = None
    # cpu: the front end's processes (HTTP + tokenizer, detokenizer), placed with the split.
    frontend_pids: Callable[[], list[int]] | None = None


@dataclass(frozen=True)
class WorkerStart:
    """How a new prefill worker starts on a split's prefill share (a standby, a restart): what it is
    given before its first instruction. Two splits with the same WorkerStart share one worker."""

    threads: int | None  # torch threads; None: torch's default
    env: tuple[tuple[str, str], ...] = ()  # extra environment (MPS: its SM percentage)
    cores: tuple[int, ...] = ()  # CPU cores it is pinned to once it exists; () leaves it unpinned


class PartitionBackend(Protocol):
    name: str
    unit: str
    units: int  # what the whole device has, in `unit`

    def check(self, split: Split) -> None:
        """Raise InvalidSplit, naming the valid range, if the split cannot be applied."""

    def apply(self, split: Split, workers: Workers) -> dict:
        """Apply the split to the workers; return what is now in force (for the history)."""

    # The two-process engine's owner also asks (CpuCores, and MpsPrefillShare on a GPU):
    def worker_start(self, split: Split) -> WorkerStart:
        """How a prefill worker for this split starts."""

    def cores_of(self, role: str) -> list[int]:
        """The CPU cores `role` computes on now (for the step records; [] on a GPU)."""


