"""`semipd plan --launch`: the chosen plan started on this machine (cores as devices) until Ctrl-C.

planner/local_launch.py decides which instance runs where (or why the plan cannot run here); this
module builds the command lines (SGLang's CPU engine needs semipd's environment and defaults:
engine/), and stack/plan_run.py runs them. As `semipd up`: the URL once ready, logs in --run-dir,
a part that dies stops the rest with its log's last lines, Ctrl-C or SIGTERM stops everything.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"  # every part binds loopback


def served_model(model_path: str) -> tuple[str, str]:
    """(the model folder the instances serve, how it was chosen): --model-path when it is a model
    folder; else the embedded tiny model (the plan's model is a GPU profile's name)."""
    if (Path(model_path) / "config.json").is_file():
        return model_path, model_path
    from engine.default_model import embedded_default_model

    return str(embedded_default_model()), "the embedded tiny model (--model-path is not a model folder here)"


def instance_command(inst, model: str, admin_key: str | None) -> list[str]:
    """The command line of one instance of the local plan, pinned to its cores."""
    from engine.launch import sglang_argv
    from engine.tensor_overlap.cpu_tp import NO_NCCL, core_binding
    from stack.fleet import pinned, semipd_engine

    if inst.kind == "semi-pd":  # `semipd serve` takes the admin key from the environment
        return semipd_engine(list(inst.cores), HOST, inst.port, ["--model", model, *inst.args])
    # stock SGLang with semipd's CPU defaults (KV budget, dtype, metrics), its own attention
    argv = sglang_argv(model, HOST, inst.port, "cpu", ["--attention-backend", "torch_native", *inst.args,
                                                        *(["--admin-api-key", admin_key] if admin_key else [])])
    command = [sys.executable, "-m", "sglang.launch_server", *argv]
    if inst.ranks > 1:  # SGLang's CPU engine (TP or PP): each rank on its share of the cores, gloo, no NCCL
        command = ["env", f"SGLANG_CPU_OMP_THREADS_BIND={core_binding(list(inst.cores), inst.ranks)}",
                   f"SGLANG_NCCL_SO_PATH={NO_NCCL}", *command]
    return pinned(list(inst.cores), command)


def tuner_command(inst, policy: str, ttft_slo_s: float, tpot_slo_s: float, run_dir: Path, index: int) -> list[str]:
    """`semipd tune` on a semi-PD instance: the plan's policy (a tuned file if given, else the policy's
    CPU defaults) and SLOs."""
    from stack.server_process import SEMIPD

    name, _, params = policy.partition(":")
    return [*SEMIPD, "tune", "--engine", f"http://{HOST}:{inst.port}", "--policy", name,
            *(["--params", params] if params else []), "--ttft-slo", f"{ttft_slo_s:g}",
            "--tpot-slo", f"{tpot_slo_s:g}", "--host", HOST, "--port", str(inst.tuner_port),
            "--store", str(run_dir / f"tuner-{index}.db"), "--fresh"]


def check_ports(ports: dict[str, int]) -> None:
    """ValueError naming the first port out of range or in use."""
    from stack.up import port_in_use

    for what, port in ports.items():
        if not 0 < port < 65536:
            raise ValueError(f"{what}: port {port} is out of range 1..65535")
        if port_in_use(HOST, port):
            raise ValueError(f"{what}: port {port} is in use on {HOST}; stop what holds it or choose another port")


def launch(args, plan, number: int) -> int:
    """Start plan `number` here and serve until Ctrl-C; the exit code."""
    from contract.access import ADMIN_KEY_ENV, TUNER_KEY_ENV
    from engine.device_env import prepare_cpu_process_env
    from planner.local_launch import CannotRunHere, local_plan, local_ports
    from stack.plan_run import PlanRun
    from stack.server_process import ServerStartError
    from stack.up import stack_keys

    try:
        local = local_plan(plan, sorted(os.sched_getaffinity(0)), args.launch_port, args.tuner_port, number)
        ports = local_ports(local) | ({"--router-metrics-port": args.router_metrics_port} if local.routed else {})
        if len(set(ports.values())) < len(ports):
            raise ValueError(f"the ports must differ, got {ports}")
        check_ports(ports)
    except CannotRunHere as exc:
        print(f"semipd plan: cannot launch here: {exc}. Nothing was started.", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"semipd plan: cannot launch: {exc}. Nothing was started.", file=sys.stderr)
        return 2

    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model, model_note = served_model(args.model_path)
    keys, _ = stack_keys(os.environ, run_dir)
    env = {**{k: v for k, v in os.environ.items() if k not in keys}, **keys, "PYTHONUNBUFFERED": "1"}
    prepare_cpu_process_env(env)  # SGLang's CPU engine and semipd's sgl_kernel stand-in, for stock SGLang
    commands = [instance_command(inst, model, keys[ADMIN_KEY_ENV]) for inst in local.instances]
    tuners = [(tuner_command(inst, args.policy, args.ttft_slo, args.tpot_slo, run_dir, i), inst.tuner_port)
              if inst.tuner_port is not None else None for i, inst in enumerate(local.instances)]
    run = PlanRun(run_dir, commands, [i.port for i in local.instances], [list(i.cores) for i in local.instances],
                  env, local.routed, local.port, args.router, args.router_metrics_port, tuners)
    kind = "semi-PD (semipd serve --mode semi-pd, with a tuner each)" if plan.candidate.kind == "semi-pd" \
        else "SGLang (python -m sglang.launch_server)"
    signal.signal(signal.SIGINT, signal.default_int_handler)  # SIGTERM as Ctrl-C, even where SIGINT was ignored
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    try:
        print(f"\nsemipd plan: launching plan {number} ({plan.candidate.label} x {plan.replicas}) on cores "
              f"{','.join(map(str, local.cores))}: {len(local.instances)} {kind} instance"
              f"{'s behind SGLang' + chr(39) + 's router' if local.routed else ''}, serving {model_note}; "
              f"logs in {run_dir}/", flush=True)
        run.launch()
        run.wait_ready(args.start_timeout)
        lines = [f"  instance {i}  {p.url}  (cores {','.join(map(str, inst.cores))}"
                 + (f"; tuner {t.url}/state" if t else "") + ")"
                 for i, (p, inst, t) in enumerate(zip(run.instances, local.instances, run.tuners))]
        print(f"semipd plan: ready after {time.monotonic() - started:.0f} s; clients use {run.url}"
              + (" (SGLang's router)" if local.routed else "") + "\n" + "\n".join(lines)
              + (f"\n  keys in {run_dir}/keys.env ({ADMIN_KEY_ENV}: the instances' admin routes"
                 + (" and the router's /workers" if local.routed else "")
                 + (f"; {TUNER_KEY_ENV}: the tuners'" if any(run.tuners) else "") + ")")
              + f"\n  try: semipd bench --url {run.url} --workload 'poisson:rate=1,prompt=128,output=32,count=20' "
              "--ttft-slo 2 --tpot-slo 0.2\nCtrl-C stops everything.", flush=True)
        while True:
            time.sleep(1.0)
            dead = run.exited()
            if dead:
                name, part = dead
                print(f"semipd plan: the {name} exited with code {part.process.returncode}; stopping the rest. "
                      f"Last lines of {part.log_path}:\n{part.log_tail()}", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        return 0
    except (ServerStartError, RuntimeError, OSError) as exc:
        print(f"semipd plan: {exc}", file=sys.stderr)
        return 1
    finally:
        for number_ in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up short
            signal.signal(number_, signal.SIG_IGN)
        run.stop()
        print("semipd plan: stopped", flush=True)
