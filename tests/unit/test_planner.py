"""The placement planner: feasibility rules, units on nodes, ranking, PP in the simulator, launch
commands, and the `semipd plan` command (bad input, a small real search)."""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from cli.main import main
from simulator.hardware_profiles import HARDWARE, MODELS
from simulator.perf_model import Work, build_model, prefill_work
from planner.candidates import (Candidate, Parallel, Plan, disagg_units, estimate_disagg, instance_options,
                             low_affinity_fits, problems, rank, replicas)
from loadtest.workload import parse_workload
from planner.launch_commands import launch_commands
from simulator.simulation import Simulation

A100, H100 = HARDWARE["a100-80gb"], HARDWARE["h100"]
OPT, LLAMA8, LLAMA70 = MODELS["opt-13b"], MODELS["llama-3-8b"], MODELS["llama-3-70b"]


# -- feasibility ----------------------------------------------------------------------------------
def test_memory_llama_70b_needs_several_a100s():
    alone = problems(A100, LLAMA70, Parallel(1, 1), devices=1)
    assert len(alone) == 1 and "memory" in alone[0] and "141.2 GB" in alone[0]
    assert any("memory" in r for r in problems(A100, LLAMA70, Parallel(2, 1), devices=2))
    assert problems(A100, LLAMA70, Parallel(4, 1), devices=4) == []
    assert problems(A100, LLAMA70, Parallel(2, 2), devices=4) == []  # PP splits the weights too


def test_memory_counts_the_longest_request():
    assert problems(A100, OPT, Parallel(1, 1), devices=1, longest_request=40_000) == []
    why = problems(A100, OPT, Parallel(1, 1), devices=1, longest_request=60_000)
    assert len(why) == 1 and "60000 needed" in why[0]


def test_tp_must_divide_the_heads_and_fit_the_kv_heads():
    assert "does not divide opt-13b's 40 attention heads" in problems(A100, OPT, Parallel(3, 1), 8)[0]
    assert problems(A100, OPT, Parallel(5, 1), 8) == []  # 40 heads, 40 KV heads: TP5 is fine
    assert problems(A100, LLAMA8, Parallel(8, 1), 8) == []  # 8 KV heads, one per rank
    odd = replace(LLAMA8, name="odd", heads=48, kv_heads=8)
    assert "KV heads" in problems(A100, odd, Parallel(12, 1), 16, devices_per_node=16)[0]  # 8 % 12, 12 % 8
    assert "48 attention heads" in problems(A100, odd, Parallel(9, 1), 16, devices_per_node=16)[0]
    assert problems(A100, odd, Parallel(4, 1), 4) == []


def test_pp_must_divide_the_layers_and_tp_stays_in_a_node():
    assert "does not divide opt-13b's 40 layers" in problems(A100, OPT, Parallel(1, 3), 8)[0]
    assert problems(A100, OPT, Parallel(1, 5), 8) == []
    assert "32 layers" in problems(A100, LLAMA8, Parallel(1, 5), 8)[0]
    assert any("node" in r for r in problems(A100, LLAMA70, Parallel(16, 1), 16))
    assert any("needs 8 devices, 4 available" in r for r in problems(A100, OPT, Parallel(4, 2), 4))


def test_instance_options_split_every_config_into_feasible_or_explained():
    feasible, rejected = instance_options(A100, OPT, 8)
    assert set(feasible) == {Parallel(1, 1), Parallel(1, 2), Parallel(1, 4), Parallel(1, 5), Parallel(1, 8),
                             Parallel(2, 1), Parallel(2, 2), Parallel(2, 4), Parallel(4, 1), Parallel(4, 2),
                             Parallel(5, 1), Parallel(8, 1)}
    assert Parallel(3, 1) in rejected and Parallel(1, 3) in rejected and all(rejected.values())
    feasible, rejected = instance_options(A100, LLAMA70, 4)
    assert Parallel(1, 1) not in feasible and Parallel(4, 1) in feasible and Parallel(2, 2) in feasible


# -- units on nodes -------------------------------------------------------------------------------
def test_replicas_never_straddle_a_node_for_units_that_fit_one():
    assert replicas(3, 8) == 2 and replicas(3, 16) == 4 and replicas(3, 11) == 3
    assert replicas(8, 16) == 2 and replicas(1, 8) == 8
    assert replicas(12, 24) == 2 and replicas(9, 8) == 0


def test_disagg_units_fit_and_name_their_kv_link():
    singles = [Parallel(1, 1), Parallel(2, 1), Parallel(2, 2)]
    units = disagg_units(singles, singles, 8)
    assert units and all(u.devices <= 8 and u.kv_link == "nvlink" and not u.affinity for u in units)
    assert Candidate("disagg", Parallel(2, 1), Parallel(1, 1), 1, 1, kv_link="nvlink") in units
    units = disagg_units(singles, singles, 16)
    big = [u for u in units if u.devices > 8]
    assert big and all(u.affinity in ("low", "high") for u in big)
    assert all((u.kv_link == "nvlink") == (u.affinity == "low") for u in big)
    # low node-affinity (DistServe Algorithm 2): both pipelines cut at the node boundary
    assert low_affinity_fits(Parallel(2, 2), Parallel(2, 2), 2, 1, 8)      # 12 devices, 6 per node
    assert not low_affinity_fits(Parallel(2, 1), Parallel(2, 2), 3, 2, 8)  # prefill has no stage to cut
    assert any(u.affinity == "low" for u in big) and any(u.affinity == "high" for u in big)


def test_disagg_estimate_is_the_slower_side():
    unit = Candidate("disagg", Parallel(2, 1), Parallel(1, 1), 1, 3)
    assert estimate_disagg(10.0, 4.0, unit) == 10.0
    assert estimate_disagg(10.0, 3.0, unit) == 9.0
    assert estimate_disagg(10.0, 4.0, unit, link_rate=2.5) == 2.5  # a slow KV link caps the unit


# -- ranking --------------------------------------------------------------------------------------
def test_rank_by_goodput_per_device_and_more_devices_for_the_same_goodput_ranks_lower():
    tp1 = Candidate("colocated", Parallel(1, 1), batching="prefill-first")
    tp2 = Candidate("colocated", Parallel(2, 1), batching="prefill-first")
    pd = Candidate("disagg", Parallel(2, 1), Parallel(1, 1), 1, 1, kv_link="nvlink")
    plans = [Plan(tp1, 3.0, 2), Plan(tp2, 6.0, 1), Plan(pd, 9.0, 1), Plan(tp2, 5.0, 2),
             Plan(Candidate("semi-pd", Parallel(1, 1)), 0.0, 8)]
    ranked = rank(plans)
    assert [p.per_device for p in ranked] == sorted((p.per_device for p in ranked), reverse=True)
    assert ranked[0].candidate == pd and ranked[0].per_device == 3.0
    assert len(ranked) == 4  # a plan serving nothing is dropped
    same = [Plan(tp2, 6.0, 2), Plan(tp1, 6.0, 2)]  # 12 req/s on 4 devices vs 12 req/s on 2
    assert rank(same)[0].candidate == tp1
    # equal goodput per device: the larger total first, then fewer devices
    assert rank([Plan(tp1, 3.0, 1), Plan(tp1, 3.0, 2)])[0].replicas == 2


# -- pipeline parallelism in the performance model and the simulator ------------------------------
def test_pp_splits_memory_and_adds_stage_sends():
    one, two = build_model("a100-80gb", "opt-13b", 1), build_model("a100-80gb", "opt-13b", 1, pp=2)
    assert two.devices == 2 and two.kv_capacity > 2 * one.kv_capacity  # weights halve per device
    work = prefill_work([(1024, 0)])
    assert two.step_time(work, 1.0) > one.step_time(work, 1.0)  # the whole pipeline's latency + sends
    slow = build_model("a100-80gb", "opt-13b", 1, pp=2, stage_link_bandwidth=25e9 / 8)
    assert slow.step_time(work, 1.0) > two.step_time(work, 1.0)
    assert two.step_time(Work(decode_batch=8, decode_context=8000), 1.0) > 0


def test_simulator_runs_pp_micro_batches_and_separate_decode_instances():
    burst = parse_workload("poisson:rate=200,prompt=uniform(200,800),output=uniform(20,80),count=120,seed=3")
    one, two = build_model("a100-80gb", "opt-13b", 1), build_model("a100-80gb", "opt-13b", 1, pp=2)
    ends = {}
    for name, model in (("pp1", one), ("pp2", two)):
        sim = Simulation(model, "unified", batching="prefill-first")
        assert len(sim.prefill) == model.pp and len({id(w.pool) for w in sim.prefill}) == 1
        reqs = sim.run(burst)
        assert all(r.error is None and r.generated == r.output for r in reqs)
        assert sim.prefill[0].pool.used == 0 and sim.prefill[0].pool.remaining_output == 0
        ends[name] = max(r.finish for r in reqs)
    assert ends["pp2"] < ends["pp1"]  # two micro-batches in flight drain a burst sooner
    p, d = build_model("a100-80gb", "opt-13b", 2), build_model("a100-80gb", "opt-13b", 1, pp=2)
    sim = Simulation(p, "disagg", decode_model=d, instances=(1, 2))
    assert sim.devices == 2 + 2 * 2 and len(sim.decode) == 4 and all(w.model is d for w in sim.decode)
    reqs = sim.run(burst)
    assert all(r.error is None and r.generated == r.output for r in reqs)
    # a PP prefill instance's micro-batch workers share the instance's one KV link
    sim = Simulation(two, "disagg", instances=(2, 1), link_bandwidth=1e9)
    assert [w.link_owner for w in sim.prefill] == [sim.prefill[0]] * 2 + [sim.prefill[2]] * 2
    reqs = sim.run(burst)
    assert all(r.error is None and r.generated == r.output for r in reqs)
    assert sim.prefill[0].link_free > 0 and sim.prefill[1].link_free == 0.0  # all through the owner
    with pytest.raises(ValueError, match="pipeline"):
        Simulation(two, "semi-pd")


# -- launch commands ------------------------------------------------------------------------------
def test_launch_commands_per_instance():
    pd = Plan(Candidate("disagg", Parallel(2, 1), Parallel(1, 1), 1, 2, kv_link="nvlink"), 5.0, 2)
    lines = launch_commands(pd, "/models/opt-13b", 0.25, 0.1)
    servers = [l for l in lines if "sglang.launch_server" in l]
    assert len(servers) == 6
    assert sum("--disaggregation-mode prefill" in l for l in servers) == 2
    assert sum("--disaggregation-mode decode" in l for l in servers) == 4
    assert all("--disaggregation-transfer-backend mooncake" in l for l in servers)
    gpus = [int(re.search(r"--base-gpu-id (\d+)", l).group(1)) for l in servers]
    assert gpus == [0, 2, 3, 4, 6, 7]  # 2 + 1 + 1 devices per unit, two units on one node
    assert "--pd-disaggregation" in lines[-1] and lines[-1].count("--prefill") == 2 and lines[-1].count("--decode") == 4
    semi = Plan(Candidate("semi-pd", Parallel(2, 1)), 5.0, 1)
    lines = launch_commands(semi, "/m", 0.25, 0.1, policy="mpc", params={"overlap": 1})
    assert "semipd serve --mode semi-pd" in lines[0] and "--split 100,100" in lines[0] and "--tp-size 2" in lines[0]
    assert "semipd tune" in lines[1] and "--params mpc-params.json" in lines[1] and '"overlap": 1' in lines[1]
    # low node-affinity: every instance striped over both nodes, one pipeline segment on each
    low = Plan(Candidate("disagg", Parallel(2, 2), Parallel(2, 2), 2, 1, kv_link="nvlink", affinity="low"), 5.0, 1)
    servers = [l for l in launch_commands(low, "/m", 1, 0.1) if "sglang.launch_server" in l]
    assert [l.split(":")[0] for l in servers] == ["node0", "node1"] * 3
    assert all("--nnodes 2" in l for l in servers) and servers[0].split("--base-gpu-id")[1] == servers[1].split(
        "--base-gpu-id")[1]
    big = Plan(Candidate("colocated", Parallel(4, 4), batching="mixed", chunk_size=1024), 5.0, 1)
    lines = launch_commands(big, "/m", 1, 0.1)
    assert len(lines) == 2 and all("--nnodes 2" in l and "--pp-size 4" in l and "--enable-mixed-chunk" in l for l in lines)


def test_launch_flags_are_sglang_server_flags():
    spec = importlib.util.find_spec("sglang")
    assert spec, "SGLang is needed (`make test` installs the engine extra)"
    fields = Path(spec.origin).parent / "srt" / "arg_groups" / "fields"
    names = set(re.findall(r"^\s+(\w+): A\[", "".join(p.read_text() for p in fields.glob("*.py")), re.M))
    plans = [Plan(Candidate("disagg", Parallel(2, 2), Parallel(1, 1), 1, 1, kv_link="nvlink"), 1.0, 1),
             Plan(Candidate("colocated", Parallel(4, 4), batching="mixed", chunk_size=1024), 1.0, 1)]
    flags = {f for p in plans for line in launch_commands(p, "/m", 1, 0.1) if "sglang.launch_server" in line
             for f in re.findall(r"--([a-z][a-z-]+)", line)}
    assert flags and {f.replace("-", "_") for f in flags} <= names


# -- the command ----------------------------------------------------------------------------------
BASE = ["plan", "--model", "llama-3-8b", "--hardware", "h100", "--workload",
        "poisson:rate=1,prompt=uniform(100,600),output=uniform(10,60),count=60",
        "--ttft-slo", "0.2", "--tpot-slo", "0.05"]


@pytest.mark.parametrize("change,message", [
    ({"--model": "gpt-5"}, "valid: llama-3-8b"), ({"--hardware": "a100"}, "valid: a100-80gb, a40, h100, h200"),
    ({"--devices": "0"}, "from 1 to 1024"), ({"--devices": "2.5"}, "whole number from 1 to 1024"),
    ({"--ttft-slo": "0"}, "--ttft-slo must be positive"), ({"--tpot-slo": "-1"}, "--tpot-slo must be positive"),
    ({"--attainment": "0"}, "(0, 1]"), ({"--attainment": "1.2"}, "(0, 1]"),
    ({"--kinds": "colocated,magic"}, "valid: colocated, disagg, semi-pd"), ({"--policy": "nope"}, "valid policies"),
    ({"--workload": "zipf:1"}, "unknown workload kind")])
def test_cli_bad_input_names_the_valid_range(change, message, capsys):
    args = BASE + ["--devices", "2"]
    for flag, value in change.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_cli_no_feasible_plan_says_why(capsys):
    args = BASE + ["--devices", "1"]
    args[args.index("llama-3-8b")] = "llama-3-70b"
    assert main(args + ["--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["plans"] == [] and "memory" in out["error"] and "TP1" in out["infeasible"]


def test_cli_small_real_search_json(capsys):
    assert main(BASE + ["--devices", "2", "--iterations", "3", "--verify", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    plans = out["plans"]
    assert plans and [p["goodput_per_device_rps"] for p in plans] == sorted(
        (p["goodput_per_device_rps"] for p in plans), reverse=True)
    assert all(p["devices"] <= 2 and p["launch"] for p in plans)
    assert set(out["best_by_kind"]) == {"colocated", "disagg", "semi-pd"}
    assert "--disaggregation-mode prefill" in " ".join(out["best_by_kind"]["disagg"]["launch"])
    assert out["candidates_evaluated"] > 0 and out["simulations"] > 0 and out["wall_s"] < 60
    assert set(out["instances_alone"]) == {"TP1", "TP2", "TP1PP2"}
