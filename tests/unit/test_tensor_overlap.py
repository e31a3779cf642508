"""Tile-group overlap of GEMM and all-reduce (engine/tensor_overlap): schedule, layer, CLI.

Distributed checks run real gloo processes on 127.0.0.1 (2 and 4 ranks; 4 oversubscribes this
2-core machine). The engine itself: tests/e2e/test_tensor_overlap_engine.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.tensor_overlap import cpu_tp, sglang_patch
from engine.tensor_overlap.wave_schedule import (
    CostModel, ScheduleCache, ShapeKey, WavePlan, choose_by_measurement, choose_by_model, compositions,
    device_tag, even_groups, group_row_ranges, predict_s, validate_groups, wave_count, wave_rows_for,
)

# ---------------------------------------------------------------- wave schedule (pure functions)


def test_compositions_are_every_ordered_partition():
    got = list(compositions(4))
    assert len(got) == 8 == len(set(got))
    assert all(sum(g) == 4 and min(g) >= 1 for g in got)
    assert (4,) in got and (1, 1, 1, 1) in got and (1, 3) in got and (3, 1) in got
    assert list(compositions(1)) == [(1,)]


def test_wave_rows_and_ranges_cover_m_not_divisible():
    assert wave_rows_for(1000, 8) == 125
    assert wave_rows_for(10, 8, min_wave_rows=16) == 16  # never thinner than the minimum
    assert wave_count(1001, 125) == 9
    ranges = group_row_ranges((2, 1, 1), m=37, wave_rows=10)  # 4 waves, the last 7 rows
    assert ranges == [(0, 20), (20, 30), (30, 37)]
    assert even_groups(7, 3) == (3, 2, 2)


@pytest.mark.parametrize("groups, waves, fragment", [
    ((2, 0, 2), 4, "group size 0 at position 1 is invalid; valid: an integer in 1..4"),
    ((5,), 4, "group size 5 at position 0 is invalid; valid: an integer in 1..4"),
    ((1, 1), 4, "sum to 2; valid: they must sum to the wave count 4"),
    ((), 3, "groups is empty"),
    ((1.5, 2.5), 4, "group size 1.5 at position 0 is invalid"),
])
def test_invalid_groups_name_the_value_and_valid_range(groups, waves, fragment):
    with pytest.raises(ValueError) as err:
        validate_groups(groups, waves)
    assert fragment in str(err.value)


def test_other_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"max_waves=13 is out of range; valid: 1\.\.12"):
        wave_rows_for(100, 13)
    with pytest.raises(ValueError, match=r"waves=0 is out of range"):
        list(compositions(0))
    with pytest.raises(ValueError, match=r"group count 5 is out of range; valid: 1\.\.4"):
        even_groups(4, 5)
    with pytest.raises(ValueError, match=r"m=0 is not a valid GEMM dimension; valid: an integer >= 1"):
        ShapeKey(0, 8, 8, "cpu-gloo-x2")
    with pytest.raises(ValueError, match=r"contention=1.0 is invalid; valid: 0 <= contention < 1"):
        CostModel(1e9, 0, 1e9, contention=1.0)
    with pytest.raises(ValueError, match=r"comm_bytes_per_s=0 is invalid"):
        CostModel(1e9, 0, 0)


def test_pipeline_model():
    model = CostModel(gemm_flops_per_s=1e9, comm_latency_s=0.0, comm_bytes_per_s=4e6)
    one = predict_s(model, [(0, 100)], n=1000, k=500)  # GEMM 0.1 s, then comm 0.1 s
    assert one == pytest.approx(0.2)
    halves = predict_s(model, [(0, 50), (50, 100)], n=1000, k=500)
    assert halves == pytest.approx(0.15)  # the first half's comm hides under the second GEMM
    slowed = CostModel(1e9, 0.0, 4e6, contention=0.5)
    assert predict_s(slowed, [(0, 50), (50, 100)], 1000, 500) > halves


def test_model_tuner_splits_when_balanced_and_not_when_latency_dominates():
    balanced = CostModel(gemm_flops_per_s=1e9, comm_latency_s=1e-6, comm_bytes_per_s=4e6)
    groups, t = choose_by_model(balanced, m=800, n=1000, k=500, wave_rows=100)
    assert len(groups) > 1 and sum(groups) == 8 and t < 2 * 0.8  # better than GEMM then comm
    latency_bound = CostModel(gemm_flops_per_s=1e9, comm_latency_s=10.0, comm_bytes_per_s=4e6)
    assert choose_by_model(latency_bound, 800, 1000, 500, 100)[0] == (8,)


def test_measurement_tuner_takes_the_fastest():
    times = {(1, 1): 3.0, (2,): 2.0}
    best, table = choose_by_measurement(times, times.__getitem__)
    assert best == (2,) and table == times
    with pytest.raises(ValueError, match="no candidate"):
        choose_by_measurement([], lambda g: 0.0)


def test_schedule_cache_hits_evicts_and_round_trips(tmp_path):
    cache = ScheduleCache(maxsize=2)
    calls = []

    def choose(key):
        calls.append(key)
        return WavePlan(key.m, 16, (wave_count(key.m, 16),))

    tag = device_tag("cpu", "gloo", 2)
    a, b, c = (ShapeKey(m, 64, 32, tag) for m in (32, 48, 64))
    assert cache.get_or_choose(a, choose).groups == (2,)
    cache.get_or_choose(a, choose)
    assert (cache.hits, cache.misses, len(calls)) == (1, 1, 1)
    cache.get_or_choose(b, choose)
    cache.get_or_choose(c, choose)  # evicts a, the least recently used
    assert a not in cache and b in cache and c in cache
    # keys differ by device: a schedule tuned for 2 ranks is not reused for 4
    assert ShapeKey(48, 64, 32, device_tag("cpu", "gloo", 4)) not in cache
    path = tmp_path / "schedules.json"
    cache.save(path)
    loaded = ScheduleCache.load(path)
    assert loaded.get(b) == cache.get(b) and len(loaded) == 2
    with pytest.raises(ValueError, match="m=32 stored under a key with m=48"):
        cache.put(b, WavePlan(32, 16, (2,)))
    with pytest.raises(ValueError, match=r"sum to 4; valid: they must sum to the wave count 3"):
        cache.put(b, WavePlan(48, 16, (3, 1)))


def test_group_policy_fixed_and_auto():
    from engine.tensor_overlap.overlapped_linear import GroupPolicy, plan_from_groups

    fixed = GroupPolicy(mode="fixed", count=3)
    plan = fixed.plan(10, 64, 32, "cpu-gloo-x2")
    assert plan.row_ranges() == [(0, 4), (4, 7), (7, 10)]
    assert fixed.plan(2, 64, 32, "cpu-gloo-x2").groups == (1, 1)  # fewer rows than groups
    auto = GroupPolicy()
    first = auto.plan(4096, 4096, 1024, "cpu-gloo-x2")
    assert auto.plan(4096, 4096, 1024, "cpu-gloo-x2") is first and auto.cache.hits == 1
    assert auto.plan(1, 4096, 1024, "cpu-gloo-x2").groups == (1,)  # a decode step: nothing to split
    with pytest.raises(ValueError, match="mode='x' is invalid"):
        GroupPolicy(mode="x")
    with pytest.raises(ValueError, match=r"group size 0 at position 1 is invalid; valid: an integer in 1\.\.3"):
        plan_from_groups(40, 16, (2, 0, 1))


# ---------------------------------------------------------------- engine settings (pure)


def test_tp_overlap_flag_values():
    assert sglang_patch.parse_mode("auto") == ("auto", 0)
    assert sglang_patch.parse_mode("4") == ("fixed", 4)
    for bad in ("0", "-2", "many"):
        with pytest.raises(ValueError, match="valid: 'auto'.* or a group count >= 1"):
            sglang_patch.parse_mode(bad)


def test_cost_model_from_environment():
    env = {sglang_patch.MODEL_ENV: json.dumps({"gemm_flops_per_s": 1e11, "comm_latency_s": 1e-4,
                                               "comm_bytes_per_s": 5e9, "world_size": 2})}
    model = sglang_patch.model_from_env(env)
    assert model == CostModel(1e11, 1e-4, 5e9)  # unknown keys (from --calibrate output) are ignored
    assert sglang_patch.model_from_env({}) is None
    with pytest.raises(ValueError, match="comm_bytes_per_s=-1 is invalid"):
        sglang_patch.model_from_env({sglang_patch.MODEL_ENV: '{"gemm_flops_per_s": 1, "comm_latency_s": 0, '
                                                             '"comm_bytes_per_s": -1}'})


def test_boundary_sum_is_skipped_only_for_the_marked_tensor():
    import types
    import weakref

    import torch

    group = types.SimpleNamespace(ranks=[0, 1])
    reduced = []

    def original(self, tensor):
        reduced.append(tensor)
        return tensor

    out = torch.ones(4, 8)
    sglang_patch._summed.mark = (weakref.ref(out), out.data_ptr(), out.numel(), (0, 1))
    other = torch.ones(4, 8)
    sglang_patch._around_group_all_reduce(original, group, other)  # another tensor: summed, mark kept
    sglang_patch._around_group_all_reduce(original, types.SimpleNamespace(ranks=[0]), out.view(32))
    assert len(reduced) == 2  # same memory, other ranks: summed
    assert sglang_patch._around_group_all_reduce(original, group, out.view(2, 16)) is not None
    assert len(reduced) == 2  # the marked output (a view of it): skipped once ...
    sglang_patch._around_group_all_reduce(original, group, out)
    assert len(reduced) == 3  # ... and only once
    gone = torch.ones(3)
    sglang_patch._summed.mark = (weakref.ref(gone), gone.data_ptr(), gone.numel(), (0, 1))
    del gone  # its memory may now hold anything: the mark must not match it
    stranger = torch.ones(3)
    sglang_patch._around_group_all_reduce(original, group, stranger)
    assert len(reduced) == 4 and sglang_patch._summed.mark is None


def test_cpu_tp_environment():
    assert cpu_tp.tp_size_from_args(["--dtype", "float32", "--tp-size", "2"]) == 2
    assert cpu_tp.tp_size_from_args(["--tensor-parallel-size=4"]) == 4
    assert cpu_tp.tp_size_from_args([]) == 1
    assert cpu_tp.core_binding([0, 1], 2) == "0|1"
    assert cpu_tp.core_binding([0, 1], 4) == "0|1|0|1"  # oversubscribed: ranks share cores
    assert cpu_tp.core_binding(list(range(8)), 2) == "0-3|4-7"
    env = {"SGLANG_CPU_OMP_THREADS_BIND": "mine"}
    assert cpu_tp.prepare_cpu_tp_env(["--tp-size", "2"], env) == 2
    assert env["SGLANG_CPU_OMP_THREADS_BIND"] == "mine"  # the user's setting is kept
    assert env["SGLANG_NCCL_SO_PATH"] == cpu_tp.NO_NCCL
    untouched: dict = {}
    cpu_tp.prepare_cpu_tp_env([], untouched)
    assert untouched == {}


# ---------------------------------------------------------------- real gloo processes

# (M, N, K): M divisible and not divisible by the group count, tiny and wider shapes.
SHAPES = [(64, 32, 16), (37, 48, 24), (5, 16, 8), (130, 96, 40)]
GROUPINGS = [1, 2, 3, 4]


def _equality_worker(rank: int, world_size: int) -> dict:
    """On every rank: plain vs overlapped results for every shape and grouping, plus checks of the
    layer module, the add+RMSNorm epilogue and the reduce-scatter variant. Returns max |diff|s."""
    import torch

    from engine.tensor_overlap.overlapped_linear import (
        GroupPolicy, OverlappedRowParallelLinear, add_rmsnorm_epilogue, gemm_then_all_reduce,
        gemm_then_reduce_scatter, overlapped_gemm_all_reduce, overlapped_gemm_reduce_scatter,
    )
    from engine.tensor_overlap.wave_schedule import even_groups, group_row_ranges

    diffs = {"vs_plain": 0.0, "vs_unsharded": 0.0, "layer": 0.0, "epilogue": 0.0, "reduce_scatter": 0.0}
    for m, n, k in SHAPES:
        # Every rank draws the same full matrices and keeps its K slice: the unsharded product is
        # the ground truth, the plain GEMM + all-reduce is the baseline to match.
        gen = torch.Generator().manual_seed(m * 1000 + n)
        x_full = torch.randn(m, k * world_size, generator=gen)
        w_full = torch.randn(n, k * world_size, generator=gen)
        bias = torch.randn(n, generator=gen)
        x, w = x_full[:, rank * k:(rank + 1) * k].contiguous(), w_full[:, rank * k:(rank + 1) * k].contiguous()
        mine = bias if rank == 0 else None
        plain = gemm_then_all_reduce(x, w, mine)
        truth = torch.nn.functional.linear(x_full.double(), w_full.double(), bias.double()).float()
        for count in GROUPINGS:
            ranges = group_row_ranges(even_groups(m, min(count, m)), m, 1)
            got = overlapped_gemm_all_reduce(x, w, mine, ranges)
            diffs["vs_plain"] = max(diffs["vs_plain"], (got - plain).abs().max().item())
            diffs["vs_unsharded"] = max(diffs["vs_unsharded"], (got - truth).abs().max().item())

        layer = OverlappedRowParallelLinear(w, bias, policy=GroupPolicy(mode="fixed", count=3))
        got = layer(x.view(1, m, k))  # leading dims are kept
        assert got.shape == (1, m, n) and len(layer.last_plan.groups) == min(3, m)
        diffs["layer"] = max(diffs["layer"], (got[0] - plain).abs().max().item())

        residual = torch.randn(m, n, generator=gen)
        norm_w = torch.rand(n, generator=gen)
        expected_res = residual + plain
        expected = expected_res * torch.rsqrt(expected_res.pow(2).mean(-1, keepdim=True) + 1e-5) * norm_w
        normed, res = torch.empty(m, n), residual.clone()
        ranges = group_row_ranges(even_groups(m, min(3, m)), m, 1)
        overlapped_gemm_all_reduce(x, w, mine, ranges, epilogue=add_rmsnorm_epilogue(res, norm_w, 1e-5, normed))
        diffs["epilogue"] = max(diffs["epilogue"], (normed - expected).abs().max().item(),
                                (res - expected_res).abs().max().item())

        mr = m - m % world_size
        if mr:
            block = mr // world_size
            rs_plain = gemm_then_reduce_scatter(x[:mr], w, mine)
            rs = overlapped_gemm_reduce_scatter(x[:mr], w, mine,
                                                group_row_ranges(even_groups(block, min(2, block)), block, 1))
            assert rs.shape == (block, n)
            diffs["reduce_scatter"] = max(diffs["reduce_scatter"], (rs - rs_plain).abs().max().item(),
                                          (rs - truth[rank * block:(rank + 1) * block]).abs().max().item())

    # the epilogue passed to the collective runs per group, in order, as each completes
    seen = []
    ranges = [(0, 3), (3, 5)]
    overlapped_gemm_all_reduce(torch.ones(5, 4), torch.ones(2, 4), None, ranges,
                               epilogue=lambda out, s, e: seen.append((s, e)))
    assert seen == ranges
    # bad ranges and shapes fail before any collective is issued
    for bad, fragment in ((lambda: overlapped_gemm_all_reduce(torch.ones(5, 4), torch.ones(2, 4), None, [(0, 2)]),
                           "cover 0..2; valid: they must cover all 5 rows"),
                          (lambda: overlapped_gemm_all_reduce(torch.ones(5, 4), torch.ones(2, 3), None, [(0, 5)]),
                           "x has 4 columns but weight has 3"),
                          (lambda: overlapped_gemm_reduce_scatter(torch.ones(5, 4), torch.ones(2, 4), None, [(0, 1)]),
                           f"not divisible by the world size {world_size}")):
        try:
            bad()
        except ValueError as exc:
            assert fragment in str(exc), exc
        else:
            raise AssertionError(f"no ValueError for {fragment}")
    # the largest difference on any rank (rank 0's answer is the one returned)
    import torch.distributed as dist

    values = torch.tensor(list(diffs.values()), dtype=torch.float64)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return dict(zip(diffs, values.tolist()))


@pytest.mark.parametrize("world_size", [2, 4])
def test_overlapped_equals_plain_gemm_all_reduce(world_size):
    from engine.tensor_overlap.process_group import run_on_ranks

    diffs = run_on_ranks(world_size, _equality_worker, timeout_s=180)
    # float32: row blocks of a GEMM may use other kernel blockings than the whole GEMM, and gloo
    # may sum 4 ranks' chunks in another order, so equal up to a few float32 roundings
    assert diffs["vs_plain"] <= 1e-5, diffs
    assert diffs["layer"] <= 1e-5 and diffs["epilogue"] <= 1e-4 and diffs["reduce_scatter"] <= 1e-4, diffs
    assert diffs["vs_unsharded"] <= 1e-4, diffs


def test_world_size_out_of_range():
    from engine.tensor_overlap.process_group import run_on_ranks

    with pytest.raises(ValueError, match=r"world size 1 is out of range; valid: 2\.\.8"):
        run_on_ranks(1, _equality_worker)


def _failing_worker(rank: int, world_size: int) -> None:
    if rank == 1:
        raise RuntimeError("boom on purpose")
    import torch.distributed as dist

    dist.barrier()


def test_a_failing_rank_is_reported_not_hung():
    from engine.tensor_overlap.process_group import run_on_ranks

    with pytest.raises(RuntimeError, match="rank 1: RuntimeError: boom on purpose"):
        run_on_ranks(2, _failing_worker, timeout_s=60)


# ---------------------------------------------------------------- the CLI


def _semipd(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_bench_overlap_cli_json_and_errors():
    done = _semipd("bench-overlap", "--world-size", "2", "--shapes", "96x64x32,50x40x24", "--repeats", "2",
                   "--warmup", "1", "--max-waves", "3", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["world_size"] == 2 and report["backend"] == "gloo" and report["threads_per_rank"] == 1
    assert [(r["m"], r["n"], r["k"]) for r in report["results"]] == [(96, 64, 32), (50, 40, 24)]
    for r in report["results"]:
        assert r["plain_ms"] > 0 and r["overlapped_ms"] > 0
        assert r["speedup"] == pytest.approx(r["plain_ms"] / r["overlapped_ms"])
        assert len(r["groups"]) >= 2 and sum(r["groups"]) == wave_count(r["m"], r["wave_rows"])
        assert r["max_abs_diff"] <= 1e-5

    bad = _semipd("bench-overlap", "--world-size", "1")
    assert bad.returncode == 2 and "world size 1 is out of range; valid: 2..8" in bad.stderr
    bad = _semipd("bench-overlap", "--shapes", "12x3")
    assert bad.returncode == 2 and "shape '12x3' is invalid; valid: MxNxK" in bad.stderr
    bad = _semipd("bench-overlap", "--max-waves", "1")
    assert bad.returncode == 2 and "--max-waves 1 is out of range; valid: 2..12" in bad.stderr
    helped = _semipd("bench-overlap", "--help")
    assert helped.returncode == 0 and "--world-size N" in helped.stdout and "oversubscribed" in helped.stdout


def test_serve_rejects_a_bad_tp_overlap_value():
    done = _semipd("serve", "--tp-overlap", "zero", "--dry-run", timeout=120)
    assert done.returncode == 2 and "--tp-overlap: 'zero' is invalid" in done.stderr
