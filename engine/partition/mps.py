"""GPU SM percentage per worker through CUDA MPS, for the two-process engine (`MpsPrefillShare`).

Not verified on hardware. A running MPS client cannot change its CUDA_MPS_ACTIVE_THREAD_PERCENTAGE
(the variable is read once, when the client creates its CUDA context), so, as in the semi-PD paper,
a new share takes effect by starting a standby worker with the new percentage, attaching it to the
shared weights and KV cache, and swapping it in after the active worker's current iteration (the
owner's `--repartition standby`). The decode owner, which holds the KV cache and the radix tree,
is never replaced: it keeps every SM, and only prefill's share moves.

The variable can only lower the limit the control daemon gives its clients; the daemon must run
with per-context partitioning enabled (see `check_mps_daemon`).
"""

from __future__ import annotations

import subprocess
from typing import Callable

from engine.partition import InvalidSplit, Split, Workers, WorkerStart

PERCENT_VARIABLE = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
DAEMON_START = ("export CUDA_MPS_ENABLE_PER_CTX_DEVICE_MULTIPROCESSOR_PARTITIONING=1; "
                "nvidia-cuda-mps-control -d")


def mps_environment(share: int) -> dict[str, str]:
    """The extra environment a worker needs to start with `share` percent of the SMs."""
    return {PERCENT_VARIABLE: str(share)}


def _share_error(role: str, value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        return (f"{role} share {value!r} is out of range: each share is a whole percentage of the "
                f"GPU's SMs from 1 to 100 (shares may overlap, e.g. 100,100)")
    return None


class MpsPrefillShare:
    """The two-process engine's MPS partition: the decode owner keeps every SM (100%: it is the
    process that owns the KV cache, and is not replaced), and the prefill worker runs on P percent,
    given when it starts. A new P starts a standby worker with it, attached to the owner's storage
    over CUDA IPC and swapped in at a batch boundary (the owner's `--repartition standby`).
    Not verified on hardware."""

    name = "mps"
    unit = "percent of SMs"
    units = 100

    def valid_range(self) -> str:
        return ("prefill a whole percentage of the GPU's SMs from 1 to 100, decode 100 (under MPS the decode "
                "owner keeps every SM; 100,100 is unified mode)")

    def menu(self) -> list[tuple[int, int]]:
        """The splits a tuner chooses among: each needs a new worker, so a few, 10 points apart."""
        return [(p, 100) for p in range(20, 100, 10)] + [(100, 100)]

    def check(self, split: Split) -> None:
        if _share_error("prefill", split.prefill):
            raise InvalidSplit(f"prefill share {split.prefill!r} is out of range: {self.valid_range()}")
        if split.decode != 100 or isinstance(split.decode, bool):
            raise InvalidSplit(f"decode share {split.decode!r} is out of range: {self.valid_range()}")

    def worker_start(self, split: Split) -> WorkerStart:
        return WorkerStart(None, env=tuple(mps_environment(split.prefill).items()))

    def apply(self, split: Split, workers: Workers) -> dict:
        """Nothing moves: the worker serving this split was started on its share."""
        self.check(split)
        return {"percent": {"prefill": split.prefill, "decode": split.decode}}

    def cores_of(self, role: str) -> list[int]:
        return []


def check_mps_daemon(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> str | None:
    """None if an MPS control daemon answers; otherwise what is wrong and what to do."""
    how = f"start it with: {DAEMON_START}"
    try:
        result = run(["nvidia-cuda-mps-control"], input="get_server_list\n",
                     capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        return f"nvidia-cuda-mps-control is not on PATH (it comes with the NVIDIA driver); {how}"
    except subprocess.TimeoutExpired:
        return f"the MPS control daemon did not answer get_server_list within 10 s; restart it: {how}"
    output = f"{result.stdout or ''}{result.stderr or ''}".strip()
    # With no daemon the client says so ("Cannot find MPS control daemon process"); the exit status
    # alone is not relied on.
    if result.returncode != 0 or "cannot find" in output.lower():
        detail = f" ({output})" if output else ""
        return f"no MPS control daemon answers{detail}; {how}"
    return None
