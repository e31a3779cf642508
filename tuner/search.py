"""`semipd search`: search a policy's parameters with Optuna, on replayed traffic.

Each trial simulates the workload with the policy and the trial's parameters (default; seconds per
trial), or replays it against a live engine with the tuner running (--target URL; minutes per
trial). The objective is the SLO attainment at --rate, or the goodput (highest rate with >= 90%
attainment, by bisection). The first trial is the policy's defaults, so the gain is measured.
Studies live in an Optuna storage (a SQLite file by default; any RDB URL, so several `semipd
search` processes can share one study). The best parameters go to --out as JSON, which
`semipd tune --params` and `semipd simulate --policy NAME:FILE` read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

HELP = "search a policy's parameters with Optuna (simulated or live); writes the best as JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tuner.workload import SPEC_HELP

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
    parser.add_argument("--storage", default="sqlite:///semipd-search.db", help="Optuna storage URL")
    parser.add_argument("--study", help="study name (default POLICY-OBJECTIVE); an existing one is continued")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--out", required=True, metavar="FILE", help="write the best parameters here (JSON)")


def suggest(trial, space: dict) -> dict:
    return {name: trial.suggest_int(name, int(low), int(high)) if kind == "int" else trial.suggest_float(name, low, high)
            for name, (low, high, kind) in space.items()}


def simulated_objective(args, policy, requests, split):
    """params -> objective value, in the simulator."""
    from tuner.perf_model import build_model
    from tuner.report import bisect_goodput, summarize
    from tuner.simulate import simulate
    from tuner.workload import mean_rate, scale_rate

    model = build_model(args.hardware, args.model)
    model.check_fits()
    natural = mean_rate(requests)

    def attainment(params, rate):
        timed = requests if rate is None else scale_rate(requests, rate / natural)
        records, _ = simulate(model, timed, "semi-pd", args.ttft_slo, args.tpot_slo, split=split,
                              policy=policy, policy_params=params)
        return summarize(records, args.ttft_slo, args.tpot_slo)["slo_attainment"]

    if args.objective == "attainment":
        return lambda params: attainment(params, args.rate)
    top = args.max_rate or 4 * natural
    return lambda params: bisect_goodput(lambda r: attainment(params, r), top / 64, top)


def live_objective(args, requests, split):
    """params -> attainment, replaying against a live engine with the tuner running."""
    import asyncio
    import threading

    from tuner.loadgen import replay
    from tuner.report import summarize
    from tuner.service import EngineClient, Settings, Tuner
    from tuner.tuner_store import TunerStore
    from tuner.workload import mean_rate, scale_rate

    engine = EngineClient(args.target)
    runs = iter(range(1, 1_000_000))

    def objective(params):
        timed = requests if args.rate is None else scale_rate(requests, args.rate / mean_rate(requests))
        if split:
            engine.set_split(split, "search")
        tuner = Tuner(engine, TunerStore(":memory:"), Settings(args.ttft_slo, args.tpot_slo, args.policy, params,
                                                               True, 1.0), fresh=True)
        stop = threading.Event()
        thread = threading.Thread(target=tuner.run, args=(stop,), daemon=True)
        thread.start()
        try:  # fresh prompts each trial: no radix-cache hits from earlier ones
            records = asyncio.run(replay(args.target, timed, 1000, seed=100 + next(runs)))
        finally:
            stop.set()
            thread.join()
        return summarize(records, args.ttft_slo, args.tpot_slo)["slo_attainment"]

    return objective


def best_params(study: str, storage: str) -> dict:
    import optuna

    try:
        return dict(optuna.load_study(study_name=study, storage=storage).best_params)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"no finished trials in study {study!r} at {storage}: {exc}") from None


def run(args: argparse.Namespace, passthrough=()) -> int:
    import optuna

    from policies import get_policy, load_params
    from tuner.perf_model import ConfigError
    from tuner.simulate import parse_pair
    from tuner.workload import WorkloadError, parse_workload

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
        objective = (simulated_objective(args, policy, requests, split) if args.target == "sim"
                     else live_objective(args, requests, split))
        defaults = load_params(args.policy)
    except (ValueError, WorkloadError, ConfigError) as exc:
        print(f"semipd search: {exc}", file=sys.stderr)
        return 2

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = args.study or f"{args.policy}-{args.objective}"
    study = optuna.create_study(study_name=name, storage=args.storage, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=args.seed))
    if not study.trials:
        study.enqueue_trial({k: v for k, v in defaults.items() if k in policy.SPACE})
    started = time.perf_counter()
    study.optimize(lambda trial: objective(defaults | suggest(trial, policy.SPACE)), n_trials=args.trials,
                   show_progress_bar=sys.stderr.isatty())
    default_value = study.trials[0].value
    best = defaults | study.best_params
    result = {"policy": args.policy, "params": best, "objective": args.objective, "value": study.best_value,
              "default_value": default_value, "workload": args.workload, "ttft_slo_s": args.ttft_slo,
              "tpot_slo_s": args.tpot_slo, "target": args.target, "study": name, "storage": args.storage,
              "trials": len(study.trials)}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"study {name}: {len(study.trials)} trials in {time.perf_counter() - started:.0f} s; "
          f"{args.objective} {study.best_value:.4g} (defaults: {default_value:.4g})")
    print(f"best parameters: {json.dumps(best)}\nwritten to {args.out}")
    return 0
