"""`semipd plan`: the DistServe question over N devices. Which deployment serves the highest rate per
device within the TTFT and TPOT SLOs: colocated instances, disaggregated prefill and decode
instances, or semi-PD instances, each with its own tensor and pipeline parallelism and replicas?

Every feasible candidate (memory, heads and layers divisibility, TP inside a node) is simulated
(`semipd simulate`'s simulator and GPU profiles) on the workload's request lengths re-timed as
Poisson arrivals; its goodput is found by bisection over the rate, and plans are ranked by goodput
per device. Disaggregated units are chosen as DistServe's Algorithm 1 does: prefill and decode
instance configurations are simulated alone, the P/D ratio estimated from their goodputs, and the
most promising units simulated whole. Prints the top plans with the launch command of every
instance (SGLang flags; `semipd serve --mode semi-pd` for semi-PD).

--launch then starts plan 1 (or --launch-plan K) on this machine, a core for each device: stock
SGLang instances (`python -m sglang.launch_server`, TP and PP included) or semi-PD instances with a
tuner each, pinned to their own cores, SGLang's router in front of more than one on --launch-port
(the one URL for clients; its /workers needs the admin key, SEMIPD_ADMIN_KEY or generated, in
--run-dir/keys.env). The plan's model names a GPU profile: the instances serve --model-path when it
is a model folder, else the embedded tiny model. A plan needing more devices than this process has
cores, semi-PD instances of TP > 1, and disaggregated plans (SGLang's KV transfer needs a GPU here)
are refused with the reason, exit code 2, nothing started. Ctrl-C or SIGTERM stops every part; a
part that dies stops the rest, with its log's last lines.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "plan a deployment over N devices: colocated vs disaggregated vs semi-PD, by simulated goodput"
MAX_DEVICES = 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loadtest.workload import SPEC_HELP

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.split(": ", 1)[1] + "\n" + SPEC_HELP + (
        "\nThe workload gives the request lengths (its first --requests requests); their arrivals are "
        "re-timed as Poisson at each rate tried.")
    parser.add_argument("--model", metavar="M", help="llama-3-8b, llama-3-70b, deepseek-v2-lite, opt-13b")
    parser.add_argument("--hardware", metavar="H", help="a100-80gb, h100, h200")
    parser.add_argument("--devices", metavar="N", help=f"devices to plan for (1..{MAX_DEVICES})")
    parser.add_argument("--workload", metavar="SPEC", help="request lengths (see above)")
    parser.add_argument("--ttft-slo", type=float, metavar="S", help="TTFT SLO in seconds")
    parser.add_argument("--tpot-slo", type=float, metavar="S", help="TPOT SLO in seconds")
    parser.add_argument("--attainment", type=float, default=0.9,
                        help="share of requests that must meet both SLOs (0..1], default 0.9")
    parser.add_argument("--kinds", default="colocated,disagg,semi-pd",
                        help="which kinds of deployment to consider (default all three)")
    parser.add_argument("--policy", default="mpc", metavar="NAME[:PARAMS.json]",
                        help="semi-PD: the policy moving the split, with tuned parameters from `semipd search` "
                             "(default mpc with overlap=1: both shares may reach 100%%, starting at 100/100)")
    parser.add_argument("--requests", type=int, default=300, help="requests simulated per rate (default 300)")
    parser.add_argument("--iterations", type=int, default=6, help="bisection steps per goodput (default 6)")
    parser.add_argument("--verify", type=int, default=8,
                        help="disaggregated units simulated whole, the best by DistServe's estimate (default 8)")
    parser.add_argument("--devices-per-node", type=int, default=8, help="devices per node (default 8)")
    parser.add_argument("--inter-node-gbps", type=float,
                        help="link between nodes in Gbit/s (default the profile's 25, DistServe's testbed; "
                             "e.g. 400 for InfiniBand NDR, a high node-affinity cluster)")
    parser.add_argument("--model-path", default="MODEL_PATH",
                        help="model path in the launch commands; with --launch, served when it is a model folder")
    parser.add_argument("--transfer-backend", default="mooncake",
                        choices=("mooncake", "nixl", "ascend", "fake", "mori", "mooncake_tcp"),  # SGLang 0.5.23's
                        help="SGLang's --disaggregation-transfer-backend in the launch commands (default mooncake)")
    parser.add_argument("--top", type=int, default=5, help="plans to print (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object and nothing else")
    launch = parser.add_argument_group("launching a plan here (see above)")
    launch.add_argument("--launch", action="store_true", help="start plan 1 on this machine (cores as devices)")
    launch.add_argument("--launch-plan", type=int, metavar="K", help="start plan K instead (1..--top; implies --launch)")
    launch.add_argument("--launch-port", type=int, default=30000, metavar="P",
                        help="the router's port, the instances' on the ports after it; one instance serves P "
                             "itself (default 30000)")
    launch.add_argument("--tuner-port", type=int, default=31000, metavar="P",
                        help="semi-PD: the tuners' ports from P on (default 31000)")
    launch.add_argument("--router", choices=("cache-aware", "round-robin"), default="cache-aware",
                        help="the router's policy (default cache-aware)")
    launch.add_argument("--router-metrics-port", type=int, default=29000, metavar="P",
                        help="the router's Prometheus metrics (default 29000)")
    launch.add_argument("--run-dir", default="semipd-plan", metavar="DIR",
                        help="logs, keys.env and tuner stores (default ./semipd-plan)")
    launch.add_argument("--start-timeout", type=float, default=600, metavar="S",
                        help="give up if the instances do not answer within S seconds (default 600)")


def _devices(text) -> int:
    try:
        value = int(str(text))
    except ValueError:
        raise ValueError(f"--devices must be a whole number from 1 to {MAX_DEVICES}, got {text!r}") from None
    if not 1 <= value <= MAX_DEVICES:
        raise ValueError(f"--devices must be a whole number from 1 to {MAX_DEVICES}, got {value}")
    return value


def check_args(args) -> dict:
    """Validated settings, or ValueError / ConfigError / WorkloadError saying what is wrong."""
    from loadtest.workload import parse_workload
    from planner.candidates import KINDS
    from planner.search import planning_policy
    from simulator.hardware_profiles import HARDWARE, MODELS
    from simulator.perf_model import ConfigError, build_model

    for flag in ("model", "hardware", "devices", "workload", "ttft_slo", "tpot_slo"):
        if getattr(args, flag) is None:
            raise ValueError(f"--{flag.replace('_', '-')} is required")
    if args.hardware not in HARDWARE:
        raise ConfigError(f"unknown hardware {args.hardware!r}; valid: {', '.join(HARDWARE)} (the planner needs "
                          "a named GPU profile: memory and links; a calibrated CPU profile has neither)")
    build_model(args.hardware, args.model, 1 if args.model in MODELS else None)  # lists valid names
    devices = _devices(args.devices)
    for name in ("ttft_slo", "tpot_slo"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive (seconds), got {getattr(args, name)}")
    if not 0 < args.attainment <= 1:
        raise ValueError(f"--attainment must be in (0, 1], got {args.attainment}")
    for name, low in (("requests", 10), ("iterations", 1), ("verify", 1), ("top", 1), ("devices_per_node", 1)):
        if getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"--kinds: unknown {', '.join(unknown) or '(none given)'}; valid: {', '.join(KINDS)}")
    if args.inter_node_gbps is not None and args.inter_node_gbps <= 0:
        raise ValueError(f"--inter-node-gbps must be positive, got {args.inter_node_gbps}")
    if args.launch_plan is not None or args.launch:
        check_launch_args(args)
    policy, params, overrides = planning_policy(args.policy)
    requests = parse_workload(args.workload)[: args.requests]
    return dict(hardware=HARDWARE[args.hardware], model=MODELS[args.model], devices=devices, kinds=kinds,
                policy=policy, params=params, overrides=overrides, requests=requests)


def check_launch_args(args) -> None:
    """ValueError for launch flags that cannot work, before anything is planned."""
    if args.json:
        raise ValueError("--json prints one JSON object and nothing else; it cannot go with --launch")
    if args.launch_plan is not None and not 1 <= args.launch_plan <= args.top:
        raise ValueError(f"--launch-plan must be from 1 to --top ({args.top}), got {args.launch_plan}")
    for flag in ("launch_port", "tuner_port", "router_metrics_port"):
        if not 0 < getattr(args, flag) < 65536:
            raise ValueError(f"--{flag.replace('_', '-')} {getattr(args, flag)} is out of range 1..65535")
    if not 0 < args.start_timeout <= 86400:
        raise ValueError(f"--start-timeout must be in (0, 86400] seconds, got {args.start_timeout}")


def no_plan_reason(result: dict, devices: int) -> str:
    if not result["feasible"]:
        rejected = sorted(result["rejected"].items(), key=lambda item: -item[0].devices)
        memory = [r for _, why in rejected for r in why if ": memory:" in r]  # the widest config first
        other = sorted({r for _, why in rejected for r in why if ": memory:" not in r})
        head = f"no instance configuration fits on {devices} device{'s' if devices > 1 else ''}"
        shown = memory[:1] + other[:3]
        return head + ": " + "; ".join(shown)
    return "no feasible candidate meets the SLOs at any rate (even one request at a time misses them)"


def plan_dict(p, args, split, overrides=None) -> dict:
    from planner.launch_commands import launch_commands

    c = p.candidate
    return {"kind": c.kind, "label": c.label, "instance": {"tp": c.instance.tp, "pp": c.instance.pp},
            "decode": {"tp": c.decode.tp, "pp": c.decode.pp} if c.decode else None,
            "prefill_instances": c.prefill_count if c.kind == "disagg" else None,
            "decode_instances": c.decode_count if c.kind == "disagg" else None,
            "batching": c.batching or None, "kv_link": c.kv_link or None, "affinity": c.affinity or None,
            "unit_devices": c.devices, "replicas": p.replicas, "devices": p.devices,
            "unit_goodput_rps": p.unit_goodput, "goodput_rps": p.goodput, "goodput_per_device_rps": p.per_device,
            "launch": launch_commands(p, args.model_path, args.ttft_slo, args.tpot_slo, args.policy, split,
                                      params=overrides, transfer_backend=args.transfer_backend,
                                      devices_per_node=args.devices_per_node)}


def run(args: argparse.Namespace, passthrough=()) -> int:
    from loadtest.workload import WorkloadError
    from planner.evaluate import Evaluator
    from planner.search import search
    from simulator.perf_model import ConfigError

    try:
        settings = check_args(args)
    except (ValueError, ConfigError, WorkloadError) as exc:
        print(f"semipd plan: {exc}", file=sys.stderr)
        return 2
    ev = Evaluator(settings["hardware"], settings["model"], settings["requests"], args.ttft_slo, args.tpot_slo,
                   args.attainment, settings["policy"], settings["params"],
                   inter_node_bandwidth=args.inter_node_gbps * 1e9 / 8 if args.inter_node_gbps else 0.0,
                   devices_per_node=args.devices_per_node, iterations=args.iterations)
    devices = settings["devices"]
    result = search(ev, devices, settings["kinds"], args.verify, progress=not args.json)
    split = ev.semipd_split()
    requests = settings["requests"]
    out = {"model": args.model, "hardware": args.hardware, "devices": devices, "workload": args.workload,
           "requests": len(requests), "mean_prompt": sum(r.prompt_len for r in requests) / len(requests),
           "mean_output": sum(r.output_len for r in requests) / len(requests),
           "ttft_slo_s": args.ttft_slo, "tpot_slo_s": args.tpot_slo, "attainment": args.attainment,
           "plans": [plan_dict(p, args, split, settings["overrides"]) for p in result["plans"][: args.top]],
           "best_by_kind": {k: plan_dict(p, args, split, settings["overrides"])
                            for k, p in result["best_by_kind"].items()},
           "candidates_evaluated": len(result["evaluated"]) + 2 * len(result["feasible"]) * ("disagg" in settings["kinds"]),
           "disagg_units_estimated": len(result["disagg_estimates"]),
           "goodput_searches": result["goodput_searches"], "simulations": result["simulations"],
           "wall_s": result["wall_s"], "cpu_s": result["cpu_s"],
           "instances_alone": {par.label: {"prefill_rps": g, "decode_rps": result["decode_alone"][par]}
                               for par, g in result["prefill_alone"].items()},
           "infeasible": {p.label: why for p, why in result["rejected"].items()},
           "error": None if result["plans"] else no_plan_reason(result, devices)}
    if args.json:
        print(json.dumps(out))
        return 0 if result["plans"] else 1
    print_report(out)
    if not result["plans"]:
        return 1
    if args.launch or args.launch_plan is not None:
        from cli.plan_launch import launch

        number = args.launch_plan or 1
        if number > len(result["plans"]):
            print(f"semipd plan: --launch-plan {number}: only {len(result['plans'])} plan"
                  f"{'s' * (len(result['plans']) != 1)} found. Nothing was started.", file=sys.stderr)
            return 2
        return launch(args, result["plans"][number - 1], number)
    return 0


def print_report(out: dict) -> None:
    print(f"{out['model']} on {out['devices']} x {out['hardware']}: TTFT <= {out['ttft_slo_s']:g} s and TPOT <= "
          f"{out['tpot_slo_s']:g} s for {out['attainment']:.0%} of requests")
    print(f"workload: {out['requests']} requests (mean prompt {out['mean_prompt']:.0f}, output "
          f"{out['mean_output']:.0f} tokens), Poisson arrivals at each rate tried")
    if out["error"]:
        print(f"\nno plan: {out['error']}")
    else:
        print(f"\n{'#':>2}  {'kind':9}  {'unit':58} {'x':>3} {'devices':>7} {'goodput':>9} {'per device':>10}")
        for i, p in enumerate(out["plans"], 1):
            print(f"{i:>2}  {p['kind']:9}  {p['label']:58} {p['replicas']:>3} {p['devices']:>7} "
                  f"{p['goodput_rps']:>7.2f}/s {p['goodput_per_device_rps']:>8.2f}/s")
        print("\nbest of each kind (goodput per device):")
        for kind, p in out["best_by_kind"].items():
            print(f"  {kind:9}  {p['goodput_per_device_rps']:.2f} req/s  {p['label']} x {p['replicas']}")
        for i, p in enumerate(out["plans"], 1):
            print(f"\nplan {i}: {p['label']} x {p['replicas']}, {p['devices']} devices; launch:")
            for line in p["launch"]:
                print(f"  {line}")
        if any(p["kind"] == "semi-pd" for p in out["plans"]):
            print("\nnote: `semipd serve --mode semi-pd` does not run on GPUs yet (CPU only); the semi-PD lines "
                  "are what it will take.")
        if any("sglang_router" in line for p in out["plans"] for line in p["launch"]):
            print("note: the router lines need the `sglang-router` package.")
    print(f"\nsearch: {out['candidates_evaluated']} candidates evaluated by simulation ({out['goodput_searches']} "
          f"goodput searches, {out['simulations']} simulations; {out['disagg_units_estimated']} disaggregated units "
          f"ranked by estimate) in {out['wall_s']:.1f} s ({out['cpu_s']:.1f} s CPU)")
