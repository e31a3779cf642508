"""The simulator: conservation, monotonicity, determinism, hand-checkable cases, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.workload import Request, parse_workload
from policies import get_policy, load_params
from simulator.perf_model import ConfigError, Fitted, Work, build_model, prefill_work
from simulator.serving_systems import SYSTEMS as SERVING_SYSTEMS
from simulator.simulation import Simulation, to_records

ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = [("unified", {}), ("unified", {"batching": "prefill-first"}), ("disagg", {"instances": (2, 1), "link_bandwidth": 10e9}),
           ("semi-pd", {"split": (40, 60)}), ("semi-pd", {"split": (100, 100)}),
           ("semi-pd", {"split": (50, 50), "policy": get_policy("semipd"), "policy_params": load_params("semipd")})]
# every named serving system too, with its engine overheads, limits and coupling
SYSTEMS += [(v.system, {**v.options(), **({"link_bandwidth": 10e9} if v.system == "disagg" else {})})
            for v in SERVING_SYSTEMS.values()]
SYSTEMS = [(system, {k: v for k, v in options.items() if k != "system"}) for system, options in SYSTEMS]


def simple(units=2, kv=100_000, **kw) -> Fitted:
    """1 ms per prefill token, 10 ms per decode step on half the device: hand-checkable."""
    return Fitted(units=units, kv_capacity=kv, chunk_size=kw.pop("chunk", 4096), max_batch=64,
                  prefill=((0.5, (0.0, 0.001, 0.0, 0.0)),), decode=((0.5, (0.01, 0.0, 0.0)),), **kw)


def run(model, requests, system="semi-pd", **kw):
    sim = Simulation(model, system, **kw)
    finished = []
    original = sim.finish
    sim.finish = lambda req, now: (finished.append(req.index), original(req, now))
    reqs = sim.run(requests)
    return sim, reqs, finished


@pytest.mark.parametrize("system,options", SYSTEMS, ids=lambda x: str(x) if isinstance(x, str) else "")
def test_every_request_finishes_exactly_once_and_memory_is_returned(system, options):
    model = build_model("a100-80gb", "llama-3-8b")
    # a KV cache small enough to force retractions; shared prefixes for the radix cache
    small = Fitted(**{**simple(units=100).__dict__, "kv_capacity": 6000})
    workload = parse_workload("shared-prefix:groups=3,per_group=20,prefix=300,question=40,output=150,rate=40")
    workload += parse_workload("poisson:rate=20,prompt=uniform(100,900),output=uniform(1,300),count=80,seed=4")
    workload.sort(key=lambda r: r.arrival_s)
    for m in (model, small):
        sim, reqs, finished = run(m, workload, system, **options)
        assert sorted(finished) == list(range(len(workload)))  # each exactly once
        assert all(r.error is None for r in reqs)
        assert all(r.generated == r.output for r in reqs)
        assert all(r.first_token <= r.finish for r in reqs)
        for pool in {id(w.pool): w.pool for w in sim.prefill + sim.decode}.values():
            assert pool.used == sum(size for size, _ in pool.cache.values())
            assert pool.remaining_output == 0
            assert all(refs == 0 for _, refs in pool.cache.values())
    assert sim.retractions > 0 or system == "disagg"  # the small cache retracts


WORKS = [prefill_work([(512, 0)]), prefill_work([(4096, 2000)]), Work(decode_batch=1, decode_context=100),
         Work(decode_batch=64, decode_context=64 * 1500), prefill_work([(256, 0)], 32, 32 * 800)]
CPU_PROFILE = Fitted(units=8, kv_capacity=1000, chunk_size=512, max_batch=8,
                     prefill=((0.25, (0.02, 3e-4, 1e-9, 1e-5)), (1.0, (0.01, 1e-4, 2e-9, 1e-5))),
                     decode=((0.25, (0.005, 1e-6, 1e-4)), (1.0, (0.004, 1e-6, 2e-5))),
                     contention=(0.2, 0.1), oversubscribed=(2.0, 3.0))


def non_increasing(times) -> bool:
    return all(a >= b - 1e-12 for a, b in zip(times, times[1:])) and times[0] > times[-1]


def test_more_share_never_slows_a_phase():
    gpus = [build_model("a100-80gb", "llama-3-8b"), build_model("h100", "llama-3-70b"),
            build_model("h200", "deepseek-v2-lite"), build_model("a100-80gb", "opt-13b")]
    shares = [s / 20 for s in range(1, 21)]
    for model in gpus + [CPU_PROFILE]:
        for work in WORKS:
            for other in (None, (WORKS[1], 0.7), (WORKS[3], 1.0)):
                if model is CPU_PROFILE and other is not None:
                    # on CPU cores, growing into the other worker's cores oversubscribes them:
                    # monotone on each side of that edge, and slower across it, as measured
                    edge = 1.0 - other[1]
                    for side in ([s for s in shares if s <= edge + 1e-9], [s for s in shares if s > edge + 1e-9]):
                        if len(side) > 1:
                            assert non_increasing([model.step_time(work, s, other) for s in side])
                    continue
                assert non_increasing([model.step_time(work, s, other) for s in shares]), (model, work, other)


def test_cpu_profile_interpolates_between_measured_shares():
    work = WORKS[0]
    quarter, whole = CPU_PROFILE.step_time(work, 0.25), CPU_PROFILE.step_time(work, 1.0)
    assert quarter == pytest.approx(0.02 + 3e-4 * 512 + 1e-9 * 512 * 256)
    assert whole == pytest.approx(0.01 + 1e-4 * 512 + 2e-9 * 512 * 256)
    assert whole < CPU_PROFILE.step_time(work, 0.5) < quarter
    assert CPU_PROFILE.step_time(work, 0.125) == pytest.approx(2 * quarter)
    assert CPU_PROFILE.step_time(work, 0.5, (WORKS[2], 0.5)) == pytest.approx(1.2 * CPU_PROFILE.step_time(work, 0.5))
    assert CPU_PROFILE.step_time(work, 0.5, (WORKS[2], 0.75)) == pytest.approx(3.0 * CPU_PROFILE.step_time(work, 0.5))


def test_the_same_seed_gives_the_same_run_and_another_seed_another():
    model = build_model("h100", "llama-3-8b")

    def once(seed):
        workload = parse_workload(f"gamma:rate=30,cv=2,prompt=lognormal(800,0.8),output=uniform(10,300),count=300,seed={seed}")
        return [(r.ttft_s, r.e2e_s) for r in to_records(Simulation(model, "semi-pd", split=(60, 60)).run(workload))]

    assert once(1) == once(1)
    assert once(1) != once(2)


def test_hand_checkable_semi_pd():
    # request A: prompt 100, 5 tokens, at 0; B: prompt 50, 3 tokens, at 0.05
    requests = [Request(0.0, 100, 5), Request(0.05, 50, 3)]
    sim, reqs, _ = run(simple(), requests, split=(1, 1))
    a, b = reqs
    assert a.first_token == pytest.approx(0.100)  # 100 tokens x 1 ms
    assert b.first_token == pytest.approx(0.150)  # waits for A's prefill, then 50 ms
    # A decodes 4 steps of 10 ms from 0.10 to 0.14; B's first token at 0.15, then 2 steps.
    assert a.finish == pytest.approx(0.140)
    assert b.finish == pytest.approx(0.170)
    records = to_records(reqs)
    assert records[0].tpot_s == pytest.approx(0.010)
    assert records[1].ttft_s == pytest.approx(0.100)


def test_hand_checkable_semi_pd_prefill_waits_for_the_decode_loop():
    # The decode loop launches prefills and takes their results between its 10 ms steps.
    requests = [Request(0.0, 100, 50), Request(0.105, 55, 2)]
    _, reqs, _ = run(simple(), requests, split=(1, 1))
    b = reqs[1]
    # decode steps run 0.10-0.11-0.12...; B arrives during the first, starts prefill at 0.11,
    # ends it at 0.165, and its first token leaves when the decode step 0.16-0.17 ends
    assert b.first_token == pytest.approx(0.17)


def test_hand_checkable_unified_prefill_first_stalls_decode():
    requests = [Request(0.0, 100, 5), Request(0.105, 50, 2)]
    _, reqs, _ = run(simple(), requests, "unified", batching="prefill-first")
    a, b = reqs
    # A: prefill to 0.10, decode step to 0.11; B's prefill (0.11-0.16) stalls A; then A's 3 steps
    # run together with B's one: 0.17 (B done), 0.18, 0.19.
    assert a.first_token == pytest.approx(0.10)
    assert b.first_token == pytest.approx(0.16)
    assert b.finish == pytest.approx(0.17)
    assert a.finish == pytest.approx(0.19)


def test_radix_cache_skips_a_cached_prefix():
    requests = [Request(0.0, 110, 2, prefix_group=7, prefix_len=100), Request(1.0, 110, 2, prefix_group=7, prefix_len=100),
                Request(2.0, 110, 2, prefix_group=8, prefix_len=100)]
    _, reqs, _ = run(simple(), requests, split=(1, 1))
    ttfts = [r.first_token - r.arrival for r in reqs]
    assert ttfts == pytest.approx([0.110, 0.010, 0.110])  # only the question is computed on a hit


def test_policy_is_called_with_observations_and_moves_the_split():
    calls = []

    class Recorder:
        @staticmethod
        def decide(obs, params, state):
            calls.append(obs)
            return get_policy("static").decide(obs, {"prefill_pct": 75, "decode_pct": 25}, state)

    model = build_model("a100-80gb", "llama-3-8b")
    workload = parse_workload("poisson:rate=5,prompt=500,output=100,count=50")
    sim, reqs, _ = run(model, workload, split=(50, 50), policy=Recorder, tick_s=1.0)
    assert calls and calls[0].split == (50, 50) and calls[1].split == (75, 25)
    assert sim.decisions[0]["new"] == (75, 25)
    assert sim.prefill[0].share == 0.75 and sim.decode[0].share == 0.25
    assert sum(o.ttft.total for o in calls) <= 50 and calls[0].units == 100


def test_disaggregation_pays_for_the_kv_transfer():
    model = build_model("a100-80gb", "llama-3-8b")
    workload = [Request(0.0, 2000, 3)]
    fast = to_records(Simulation(model, "disagg").run(workload))[0]
    slow = to_records(Simulation(model, "disagg", link_bandwidth=1e9).run(workload))[0]
    transfer = 2000 * model.kv_bytes_per_token / 1e9
    assert fast.ttft_s == pytest.approx(slow.ttft_s)  # the first token comes from the prefill instance
    assert slow.e2e_s - fast.e2e_s == pytest.approx(transfer - model.kv_transfer_s(2000), rel=0.01)


def test_fitted_profile_round_trips(tmp_path):
    profile = simple(contention=(0.1, 0.2), request_overhead_s=0.004)
    profile.save(tmp_path / "p.json")
    assert Fitted.load(tmp_path / "p.json") == profile
    (tmp_path / "bad.json").write_text(json.dumps({"units": 2}))
    with pytest.raises(ConfigError, match="calibrate-model"):
        Fitted.load(tmp_path / "bad.json")


def simulate_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", "simulate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


BASE = ["--workload", "poisson:rate=2,prompt=200,output=20,count=50", "--ttft-slo", "0.3", "--tpot-slo", "0.1"]


def test_cli_report_and_json():
    done = simulate_cli("--hardware", "a100-80gb", "--model", "llama-3-8b", "--rates", "5,50", "--json", *BASE)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [r["rate"] for r in result["rates"]] == [5.0, 50.0]
    assert result["completed"] == 50 and result["devices"] == 1 and 5 <= result["goodput_rps"] <= 50
    listing = simulate_cli("--list")
    assert "a100-80gb" in listing.stdout and "deepseek-v2-lite" in listing.stdout and "source:" in listing.stdout
    assert "vllm-0.6-chunked" in listing.stdout and "semipd-async" in listing.stdout
    # a named serving system, one of its settings overridden: more engine time, slower TPOT
    vllm = json.loads(simulate_cli("--hardware", "a100-80gb", "--model", "llama-3-8b", "--serving-system",
                                   "vllm-0.6-default", "--json", *BASE).stdout)
    sglang = json.loads(simulate_cli("--hardware", "a100-80gb", "--model", "llama-3-8b", "--serving-system",
                                     "sglang-prefill-first", "--json", *BASE).stdout)
    assert vllm["label"] == "vllm-0.6-default" and vllm["completed"] == 50
    assert vllm["tpot_p50_s"] > sglang["tpot_p50_s"] + 0.01  # vLLM's 17.2 ms a step, serial


@pytest.mark.parametrize("args,message", [
    (["--hardware", "b200", "--model", "llama-3-8b"], "valid: a100-80gb, a40, h100, h200"),
    (["--hardware", "h100", "--model", "gpt-5"], "valid: llama-3-8b, llama-2-7b, llama-3-70b, deepseek-v2-lite, opt-13b"),
    (["--hardware", "h100", "--model", "llama-3-8b", "--policy", "magic"], "valid policies: static, semipd, threshold, mpc"),
    (["--hardware", "a100-80gb", "--model", "llama-3-70b", "--tp", "1"], "141.2 GB per device"),
    (["--hardware", "h100", "--model", "llama-3-8b", "--split", "0,100"], "out of range 1..100"),
    (["--hardware", "h100", "--model", "llama-3-8b", "--system", "unified", "--split", "50,50"], "semi-pd only"),
    (["--hardware", "h100", "--model", "llama-3-8b", "--serving-system", "vllm"], "valid: vllm-0.6-default"),
])
def test_cli_bad_input_names_the_valid_values(args, message):
    done = simulate_cli(*args, *BASE)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
