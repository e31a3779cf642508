"""Timings taken by every rank together: the benchmark (`semipd bench-overlap`), the measured
tuner, and the cost model's constants.

A time is the slowest rank's (an all-reduce of MAX), so all ranks hold identical numbers and any
choice made from them is the same on every rank - a requirement, since ranks that chose different
groups would issue mismatched collectives.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from engine.tensor_overlap.overlapped_linear import (
    CPU_GLOO_MODEL, gemm_then_all_reduce, overlapped_gemm_all_reduce,
)
from engine.tensor_overlap.process_group import run_on_ranks
from engine.tensor_overlap.wave_schedule import (
    CostModel, ShapeKey, ScheduleCache, WavePlan, choose_by_measurement, choose_by_model,
    compositions, device_tag, group_row_ranges, wave_count, wave_rows_for,
)


def collective_medians_s(fns, warmup: int, repeats: int, group=None) -> list[float]:
    """Per function, the median over repeats of the slowest rank's wall time. The functions take
    turns within each repeat, so load from other processes on the machine hits all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = torch.empty(len(fns), repeats, dtype=torch.float64)
    for i in range(repeats):
        for j, fn in enumerate(fns):
            dist.barrier(group=group)
            t0 = time.perf_counter()
            fn()
            times[j, i] = time.perf_counter() - t0
    dist.all_reduce(times, op=dist.ReduceOp.MAX, group=group)
    return [statistics.median(row) for row in times.tolist()]


def collective_median_s(fn, warmup: int, repeats: int, group=None) -> float:
    return collective_medians_s([fn], warmup, repeats, group)[0]


@dataclass
class ShapeResult:
    m: int
    n: int
    k: int
    gemm_ms: float
    all_reduce_ms: float
    plain_ms: float
    overlapped_ms: float
    speedup: float
    groups: list[int]
    wave_rows: int
    tuner: str
    model_groups: list[int]
    model_predicted_ms: float
    max_abs_diff: float


def _operands(rank: int, m: int, n: int, k: int):
    gen = torch.Generator().manual_seed(1000 + rank)
    return torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen) / k ** 0.5


def bench_shape(rank: int, world_size: int, m: int, n: int, k: int, repeats: int, warmup: int,
                tuner: str, max_waves: int, cache: ScheduleCache,
                model: CostModel = CPU_GLOO_MODEL) -> ShapeResult:
    x, w = _operands(rank, m, n, k)
    buf = torch.randn(m, n)
    wave_rows = wave_rows_for(m, max_waves, 1)
    model_groups, predicted = choose_by_model(model, m, n, k, wave_rows)
    key = ShapeKey(m, n, k, device_tag("cpu", "gloo", world_size))

    def choose(key: ShapeKey) -> WavePlan:
        if tuner == "model":
            return WavePlan(m, wave_rows, model_groups)
        # Candidates with 2+ groups only: one group is the plain path. All candidates take turns
        # within each repeat (see collective_medians_s), so none is favoured by a quiet moment.
        candidates = [g for g in compositions(wave_count(m, wave_rows)) if len(g) > 1]
        runs = [(lambda r=group_row_ranges(g, m, wave_rows): overlapped_gemm_all_reduce(x, w, None, r))
                for g in candidates]
        table = dict(zip(candidates, collective_medians_s(runs, warmup, repeats)))
        best, _ = choose_by_measurement(candidates, table.__getitem__)
        return WavePlan(m, wave_rows, best)

    plan = cache.get_or_choose(key, choose)
    ranges = plan.row_ranges()
    gemm_ms, ar_ms, plain_ms, over_ms = (1e3 * t for t in collective_medians_s([
        lambda: torch.nn.functional.linear(x, w),
        lambda: dist.all_reduce(buf),
        lambda: gemm_then_all_reduce(x, w),
        lambda: overlapped_gemm_all_reduce(x, w, None, ranges),
    ], warmup, repeats))

    reference = gemm_then_all_reduce(x, w)
    got = overlapped_gemm_all_reduce(x, w, None, plan.row_ranges())
    diff = torch.tensor([(got - reference).abs().max().item()], dtype=torch.float64)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return ShapeResult(m, n, k, gemm_ms, ar_ms, plain_ms, over_ms, plain_ms / over_ms,
                       list(plan.groups), plan.wave_rows, tuner, list(model_groups),
                       1e3 * predicted,
                       float(diff.item()))


def bench_worker(rank: int, world_size: int, shapes: list[tuple[int, int, int]], repeats: int,
                 warmup: int, tuner: str, max_waves: int) -> list[dict]:
    """The benchmark on one rank; rank 0's list is what the caller receives."""
    cache = ScheduleCache()
    return [asdict(bench_shape(rank, world_size, m, n, k, repeats, warmup, tuner, max_waves, cache))
            for m, n, k in shapes]


def calibrate_worker(rank: int, world_size: int, m: int, n: int, k: int, repeats: int = 5) -> dict:
    """Constants for CostModel on this machine: GEMM flops/s, all-reduce latency and bandwidth,
    per-call cost of splitting the GEMM, and the slowdown of GEMM while a collective runs."""
    x, w = _operands(rank, m, n, k)
    lin = torch.nn.functional.linear
    full = collective_median_s(lambda: lin(x, w), 2, repeats)
    eighths = collective_median_s(lambda: [lin(x[i * m // 8:(i + 1) * m // 8], w) for i in range(8)], 2, repeats)
    small, big = torch.zeros(16), torch.zeros(m, n)
    lat = collective_median_s(lambda: dist.all_reduce(small), 2, repeats)
    big_s = collective_median_s(lambda: dist.all_reduce(big), 2, repeats)

    def gemm_during_comm():
        work = dist.all_reduce(big, async_op=True)
        lin(x, w)
        work.wait()
    both = collective_median_s(gemm_during_comm, 2, repeats)
    return {
        "gemm_flops_per_s": 2.0 * m * n * k / full,
        "launch_s": max(0.0, (eighths - full) / 7),
        "comm_latency_s": lat,
        "comm_bytes_per_s": m * n * 4 / max(big_s - lat, 1e-9),
        # both = max(gemm, comm) if overlap were free; any excess is the two sharing cores
        "contention": min(0.9, max(0.0, (both - max(full, big_s)) / max(min(full, big_s), 1e-9))),
    }


def benchmark(world_size: int, shapes: list[tuple[int, int, int]], repeats: int, warmup: int, tuner: str,
              max_waves: int, timeout_s: float) -> list[dict]:
    """The benchmark on `world_size` local gloo ranks: per shape, a ShapeResult as a dict.
    RuntimeError if a rank fails or no answer comes within `timeout_s`."""
    return run_on_ranks(world_size, bench_worker, (shapes, repeats, warmup, tuner, max_waves), timeout_s=timeout_s)


def calibrate_cost_model(world_size: int, shape: tuple[int, int, int], repeats: int, timeout_s: float) -> dict:
    """CostModel's constants measured on `world_size` local gloo ranks at one shape (see
    calibrate_worker). RuntimeError if a rank fails or no answer comes within `timeout_s`."""
    m, n, k = shape
    return run_on_ranks(world_size, calibrate_worker, (m, n, k, repeats), timeout_s=timeout_s)
