"""Run one function on N local processes joined in a gloo process group; collect rank 0's answer.

Used by the benchmark and the tests: real processes and real communication over 127.0.0.1, with a
bounded wait so that a hung collective fails loudly instead of hanging the caller.
"""

from __future__ import annotations

import os
import socket
import traceback
from typing import Any, Callable

MAX_WORLD_SIZE = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_world_size(world_size: int) -> None:
    if not isinstance(world_size, int) or not 2 <= world_size <= MAX_WORLD_SIZE:
        raise ValueError(f"world size {world_size!r} is out of range; valid: 2..{MAX_WORLD_SIZE} "
                         f"(local gloo processes; more than the CPU's cores oversubscribes it)")


def _entry(rank: int, world_size: int, port: int, threads: int, fn: Callable, args: tuple, queue) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world_size)
        result = fn(rank, world_size, *args)
        dist.barrier()
        if rank == 0:
            queue.put(("ok", result))
        dist.destroy_process_group()
    except BaseException as exc:  # report to the parent; it would otherwise only see an exit code
        queue.put(("error", f"rank {rank}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        raise


def run_on_ranks(world_size: int, fn: Callable[..., Any], args: tuple = (), timeout_s: float = 120.0,
                 threads: int = 1) -> Any:
    """fn(rank, world_size, *args) on every rank (fn must be importable: a module-level function);
    returns rank 0's return value, or raises RuntimeError with the first failure."""
    import torch.multiprocessing as mp

    check_world_size(world_size)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    env_before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # children start with it; torch reads it at import
    try:
        procs = [ctx.Process(target=_entry, args=(r, world_size, port, threads, fn, args, queue), daemon=True)
                 for r in range(world_size)]
        for p in procs:
            p.start()
    finally:
        if env_before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_before
    try:
        status, payload = queue.get(timeout=timeout_s)
    except Exception:
        status, payload = "error", f"no answer from rank 0 within {timeout_s:.0f} s"
    finally:
        for p in procs:
            p.join(timeout=10 if status == "ok" else 0.5)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    if status != "ok":
        raise RuntimeError(payload)
    return payload
