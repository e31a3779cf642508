"""What SGLang 0.5.23's CPU engine needs from the environment to run tensor parallelism here.

Found by trying `--tp-size 2` on this 2-core, 1-NUMA-node machine (docs/tensor-overlap.md):
1. Each rank is bound to a NUMA node unless SGLANG_CPU_OMP_THREADS_BIND lists cores per rank
   ('0|1'); with one node, two ranks fail an assertion. We give each rank its share of the cores
   this process may use (ranks share cores round-robin when there are fewer cores than ranks).
2. The TP group builds a PyNccl communicator whenever libnccl loads, and torch's CUDA wheels bring
   one, so on a machine without a GPU it fails ("Expected a cuda device, but got: cpu").
   Pointing SGLANG_NCCL_SO_PATH at a library that does not exist makes SGLang treat NCCL as
   absent; collectives then go through torch.distributed on the group's gloo backend.
Settings the user made are kept. Pure environment logic: no torch, no sglang.
"""

from __future__ import annotations

import os

NO_NCCL = "/nonexistent/semipd-cpu-engine-has-no-libnccl.so"
TP_FLAGS = ("--tp-size", "--tensor-parallel-size", "--tp")


def tp_size_from_args(args: list[str]) -> int:
    """The tensor-parallel size in SGLang launch arguments (1 when absent or unreadable: SGLang's
    own parser then reports the bad value)."""
    for i, arg in enumerate(args):
        for flag in TP_FLAGS:
            value = args[i + 1] if arg == flag and i + 1 < len(args) else (
                arg.split("=", 1)[1] if arg.startswith(flag + "=") else None)
            if value is not None:
                try:
                    return int(value)
                except ValueError:
                    return 1
    return 1


def core_binding(cores: list[int], ranks: int) -> str:
    """SGLANG_CPU_OMP_THREADS_BIND value: contiguous shares of `cores`, one per rank, '|'-separated;
    with fewer cores than ranks, rank r gets core r mod len(cores)."""
    if ranks < 1 or not cores:
        raise ValueError(f"need at least one rank and one core; got {ranks} ranks, cores {cores}")
    cores = sorted(cores)
    if len(cores) < ranks:
        return "|".join(str(cores[r % len(cores)]) for r in range(ranks))
    share, extra = divmod(len(cores), ranks)
    parts, start = [], 0
    for r in range(ranks):
        size = share + (1 if r < extra else 0)
        share_cores = cores[start:start + size]
        contiguous = share_cores[-1] - share_cores[0] == len(share_cores) - 1
        parts.append(f"{share_cores[0]}-{share_cores[-1]}" if contiguous and size > 1
                     else ",".join(str(c) for c in share_cores))
        start += size
    return "|".join(parts)


def prepare_cpu_tp_env(sglang_args: list[str], environ=os.environ) -> int:
    """Set the two variables above when the arguments ask for tp > 1; returns the tp size."""
    tp = tp_size_from_args(sglang_args)
    if tp > 1:
        environ.setdefault("SGLANG_CPU_OMP_THREADS_BIND", core_binding(list(os.sched_getaffinity(0)), tp))
        environ.setdefault("SGLANG_NCCL_SO_PATH", NO_NCCL)
    return tp
