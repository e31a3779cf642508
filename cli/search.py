"""`semipd search`: search a policy's parameters with Optuna, on replayed traffic.

Each trial simulates the workload with the policy and the trial's parameters (default; seconds per
trial), or replays it against a live engine with the tuner running (--target URL; minutes per
trial). The objective is the SLO attainment at --rate, or the goodput (highest rate with >= 90%
attainment, by bisection). The first trial is the policy's defaults, so the gain is measured.
Studies live in an Optuna RDB storage, which several `semipd search` processes (and tuners, with
`semipd tune --study`) can share, started at once or not: a SQLite file on one machine, or across
machines a PostgreSQL or MySQL URL such as postgresql+psycopg2://user:password@host/db (needs
`pip install psycopg2-binary`) or mysql+pymysql://user:password@host/db (`pip install pymysql`).
Give each its own --seed: the same seed proposes the same first trials. The best parameters go
to --out as JSON, which `semipd tune --params` and `semipd simulate --policy NAME:FILE` read.
"""

from __future__ import annotations

import argparse
import json
import sys

from cli.arguments import parse_pair

HELP = "search a policy's parameters with Optuna (simulated or live); writes the best as JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loadtest.workload import SPEC_HELP

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.split(": ", 1)[1] + "\n" + SPEC_HELP
    parser.add_argument("--policy", required=True, help="static, semipd or mpc")
    parser.add_argument("--workload", required=True, metavar="SPEC")
    parser.add_argument("--ttft-slo", type=float, required=True, metavar="S")
    parser.add_argument("--tpot-slo", type=float, required=True, metavar="S")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--objective", choices=("goodput", "attainment"), default="attainment")
    parser.add_argument("--rate", type=float, help="attainment: re-time the workload to this mean rate")
    parser.add_argument("--max-rate", type=float, help="goodput: upper end of the bisection (default 4x the workload's)")
    parser.add_argument("--target", default="sim", help="sim (default) or the URL of a semi-pd engine")
    parser.add_argument("--hardware", default="a100-80gb", help="sim: a named GPU or a calibrated profile .json")
    parser.add_argument("--model", default="llama-3-8b", help="sim: a named model")
    parser.add_argument("--split", metavar="P,D", help="the split at the start (default half and half)")
    parser.add_argument("--storage", default="sqlite:///semipd-search.db",
                        help="Optuna RDB URL: sqlite:///FILE.db, postgresql+psycopg2://user:password@host/db, "
                             "mysql+pymysql://...; several searches may share one study in it")
    parser.add_argument("--study", help="study name (default POLICY-OBJECTIVE); an existing one is continued")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--out", required=True, metavar="FILE", help="write the best parameters here (JSON)")


def run(args: argparse.Namespace, passthrough=()) -> int:
    from loadtest.workload import WorkloadError, parse_workload
    from policies import get_policy, load_params
    from simulator.perf_model import ConfigError
    from tuner.search import StorageError, live_objective, run_study, simulated_objective

    try:
        policy = get_policy(args.policy)
        for name in ("ttft_slo", "tpot_slo"):
            if getattr(args, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
        if args.trials < 1:
            raise ValueError(f"--trials must be at least 1, got {args.trials}")
        if args.rate is not None and args.rate <= 0:
            raise ValueError(f"--rate must be positive, got {args.rate}")
        if args.target != "sim" and args.objective == "goodput":
            raise ValueError("a live --target measures attainment only: use --objective attainment")
        requests = parse_workload(args.workload)
        split = parse_pair(args.split, "--split") if args.split else None
        objective = (simulated_objective(policy, requests, args.ttft_slo, args.tpot_slo, args.hardware, args.model,
                                         split, args.objective, args.rate, args.max_rate)
                     if args.target == "sim"
                     else live_objective(args.target, args.policy, requests, args.ttft_slo, args.tpot_slo, split,
                                         args.rate))
        defaults = load_params(args.policy)
    except (ValueError, WorkloadError, ConfigError) as exc:
        print(f"semipd search: {exc}", file=sys.stderr)
        return 2

    name = args.study or f"{args.policy}-{args.objective}"
    try:
        found = run_study(objective, policy, defaults, args.trials, name, args.storage, args.seed,
                          show_progress=sys.stderr.isatty())
    except StorageError as exc:
        print(f"semipd search: {exc}", file=sys.stderr)
        return 2
    result = {"policy": args.policy, "params": found["params"], "objective": args.objective, "value": found["value"],
              "default_value": found["default_value"], "workload": args.workload, "ttft_slo_s": args.ttft_slo,
              "tpot_slo_s": args.tpot_slo, "target": args.target, "study": name, "storage": args.storage,
              "trials": found["trials"]}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    # None: another process sharing the study is still running the defaults' trial
    defaults_value = "not finished" if found["default_value"] is None else f"{found['default_value']:.4g}"
    print(f"study {name}: {found['trials']} trials in {found['wall_s']:.0f} s; "
          f"{args.objective} {found['value']:.4g} (defaults: {defaults_value})")
    print(f"best parameters: {json.dumps(found['params'])}\nwritten to {args.out}")
    return 0
