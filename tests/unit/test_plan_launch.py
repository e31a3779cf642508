"""`semipd plan --launch` without servers: a plan mapped onto cores (planner/local_launch.py), the
command lines it becomes (cli/plan_launch.py), and the plans refused before anything starts."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from cli.main import main
from planner.candidates import Candidate, Parallel, Plan
from planner.local_launch import CannotRunHere, local_plan, local_ports

MIXED = Candidate("colocated", Parallel(1, 1), batching="mixed", chunk_size=1024)


def test_replicas_get_their_own_cores_and_the_router_the_first_port():
    local = local_plan(Plan(MIXED, 5.0, 2), [1, 0, 2], 30000, 31000)
    assert local.routed and local.port == 30000
    assert [i.cores for i in local.instances] == [(0,), (1,)]  # in order; core 2 stays free
    assert [i.port for i in local.instances] == [30001, 30002]
    assert all(i.kind == "sglang" and i.ranks == 1 and i.tuner_port is None for i in local.instances)
    assert local.instances[0].args == ("--tp-size", "1", "--chunked-prefill-size", "1024", "--enable-mixed-chunk")
    assert local_ports(local) == {"the router (--launch-port)": 30000, "instance 0 (--launch-port + 1)": 30001,
                                  "instance 1 (--launch-port + 2)": 30002}


def test_one_instance_serves_the_port_itself_with_a_rank_per_core():
    tp2 = local_plan(Plan(Candidate("colocated", Parallel(2, 1), batching="prefill-first"), 5.0, 1), [4, 5, 6], 8000,
                     9000)
    assert not tp2.routed and tp2.port == 8000 and len(tp2.instances) == 1
    inst = tp2.instances[0]
    assert inst.cores == (4, 5) and inst.port == 8000 and inst.ranks == 2
    assert inst.args == ("--tp-size", "2", "--chunked-prefill-size", "8192")  # SGLang's default, as simulated
    pp2 = local_plan(Plan(Candidate("colocated", Parallel(1, 2), batching="mixed", chunk_size=1024), 5.0, 1), [0, 1],
                     8000, 9000).instances[0]
    assert pp2.ranks == 2 and pp2.args[:4] == ("--tp-size", "1", "--pp-size", "2")


def test_semipd_instances_get_a_tuner_each():
    local = local_plan(Plan(Candidate("semi-pd", Parallel(1, 1)), 5.0, 2), [0, 1], 30000, 31000)
    assert [(i.kind, i.cores, i.port, i.tuner_port) for i in local.instances] == [
        ("semi-pd", (0,), 30001, 31000), ("semi-pd", (1,), 30002, 31001)]
    assert "instance 1's tuner (--tuner-port + 1)" in local_ports(local)


@pytest.mark.parametrize("plan,message", [
    (Plan(MIXED, 5.0, 3), r"needs 3 devices, one core each, and this process may use 2 cores \(0,1\); plan for "
                          r"--devices 1\.\.2"),
    (Plan(Candidate("disagg", Parallel(1, 1), Parallel(1, 1), 1, 1, kv_link="nvlink"), 5.0, 1),
     r"is disaggregated, and cannot run on this machine: .*needs a GPU.*Found no NVIDIA driver"),
    (Plan(Candidate("semi-pd", Parallel(2, 1)), 5.0, 1), r"semi-PD instances of TP2: .*one rank"),
])
def test_plans_that_cannot_run_here_say_which_part_and_why(plan, message):
    with pytest.raises(CannotRunHere, match=message):
        local_plan(plan, [0, 1], 30000, 31000, number=1)


def tiny_config(folder: Path) -> Path:
    """A model folder as far as the launch defaults read it (its config.json)."""
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 256,
        "max_position_embeddings": 2048}))
    return folder


def test_instance_commands_pin_cores_and_carry_the_plans_flags(tmp_path):
    from cli.plan_launch import instance_command, served_model, tuner_command

    model = str(tiny_config(tmp_path / "m"))
    assert served_model(model) == (model, model)
    tp2 = local_plan(Plan(Candidate("colocated", Parallel(2, 1), batching="prefill-first"), 5.0, 1), [0, 1], 30000,
                     31000).instances[0]
    command = instance_command(tp2, model, "k3y")
    assert command[:3] == ["taskset", "-c", "0,1"]
    assert command[3:6] == ["env", "SGLANG_CPU_OMP_THREADS_BIND=0|1",
                            "SGLANG_NCCL_SO_PATH=/nonexistent/semipd-cpu-engine-has-no-libnccl.so"]
    assert command[7:9] == ["-m", "sglang.launch_server"]
    flags = " ".join(command)
    for part in ("--tp-size 2", "--host 127.0.0.1", "--port 30000", "--device cpu", "--attention-backend torch_native",
                 "--admin-api-key k3y", "--enable-metrics", f"--model-path {model}", "--max-total-tokens"):
        assert part in flags
    one = local_plan(Plan(MIXED, 5.0, 2), [0, 1], 30000, 31000).instances[1]
    assert instance_command(one, model, None)[:4] == ["taskset", "-c", "1", command[6]]  # no env: one rank
    semi = local_plan(Plan(Candidate("semi-pd", Parallel(1, 1)), 5.0, 1), [0, 1], 30000, 31000).instances[0]
    command = instance_command(semi, model, "k3y")
    assert command[:3] == ["taskset", "-c", "0"] and "--mode semi-pd" in " ".join(command)
    assert "k3y" not in command  # semipd serve takes its key from SEMIPD_ADMIN_KEY
    tune = tuner_command(semi, "mpc", 0.25, 0.05, tmp_path, 0)
    assert " ".join(tune).endswith(f"tune --engine http://127.0.0.1:30000 --policy mpc --ttft-slo 0.25 --tpot-slo 0.05 "
                                   f"--host 127.0.0.1 --port 31000 --store {tmp_path}/tuner-0.db --fresh")


def test_the_stock_flags_are_sglang_server_flags(tmp_path):
    spec = importlib.util.find_spec("sglang")
    assert spec, "SGLang is needed (`make test` installs the engine extra)"
    from cli.plan_launch import instance_command

    fields = Path(spec.origin).parent / "srt" / "arg_groups" / "fields"
    names = set(re.findall(r"^\s+(\w+): A\[", "".join(p.read_text() for p in fields.glob("*.py")), re.M))
    inst = local_plan(Plan(Candidate("colocated", Parallel(1, 2), batching="mixed", chunk_size=1024), 5.0, 1), [0, 1],
                      30000, 31000).instances[0]
    command = instance_command(inst, str(tiny_config(tmp_path / "m")), "k")
    flags = {f.replace("-", "_") for f in re.findall(r"^--([a-z][a-z-]+)$", "\n".join(command), re.M)}
    assert {"pp_size", "enable_mixed_chunk", "admin_api_key"} <= flags <= names


BASE = ["plan", "--model", "llama-3-8b", "--hardware", "h100", "--devices", "2", "--workload",
        "poisson:rate=1,prompt=uniform(100,600),output=uniform(10,60),count=60", "--ttft-slo", "0.2",
        "--tpot-slo", "0.05", "--requests", "20", "--iterations", "1", "--verify", "1"]


def test_a_disaggregated_plan_is_refused_with_the_reason_and_nothing_starts(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(BASE + ["--kinds", "disagg", "--launch", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "plan 1 (1P TP1 + 1D TP1" in err and "is disaggregated, and cannot run on this machine" in err
    assert "Nothing was started" in err and not run_dir.exists()


@pytest.mark.parametrize("extra,message", [
    (["--launch", "--json"], "cannot go with --launch"),
    (["--launch-plan", "6"], "--launch-plan must be from 1 to --top (5), got 6"),
    (["--launch", "--launch-port", "70000"], "--launch-port 70000 is out of range 1..65535"),
    (["--launch", "--start-timeout", "0"], "--start-timeout must be in (0, 86400]")])
def test_bad_launch_flags_are_refused_before_planning(extra, message, capsys):
    assert main(BASE + extra) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "goodput" not in captured.out  # nothing was planned
