"""Searching a policy's parameters with Optuna, on replayed traffic (`semipd search`).

A trial either simulates the workload with the policy and the trial's parameters (seconds per
trial) or replays it against a live engine with a Tuner running (minutes per trial). The objective
is the SLO attainment at a rate, or in the simulator the goodput (highest rate with >= 90%
attainment, by bisection). The first trial of a study is the policy's defaults, so the gain is
measured. Studies live in an Optuna storage (a SQLite file, or any RDB URL, so several processes
can share one study).
"""

from __future__ import annotations

import asyncio
import threading
import time

from loadtest.load_generator import replay
from loadtest.report import bisect_goodput, summarize
from loadtest.workload import mean_rate, scale_rate
from simulator.perf_model import build_model
from simulator.simulation import simulate
from tuner.control_loop import Settings, Tuner
from tuner.engine_client import EngineClient
from tuner.store import TunerStore


def suggest(trial, space: dict) -> dict:
    return {name: trial.suggest_int(name, int(low), int(high)) if kind == "int" else trial.suggest_float(name, low, high)
            for name, (low, high, kind) in space.items()}


def simulated_objective(policy, requests, ttft_slo_s: float, tpot_slo_s: float, hardware: str, model: str,
                        split: tuple[int, int] | None = None, objective: str = "attainment",
                        rate: float | None = None, max_rate: float | None = None):
    """params -> objective value, in the simulator: the attainment at `rate` (None: the workload's
    own), or the goodput up to `max_rate` (default 4x the workload's)."""
    perf = build_model(hardware, model)
    perf.check_fits()
    natural = mean_rate(requests)

    def attainment(params, rate):
        timed = requests if rate is None else scale_rate(requests, rate / natural)
        records, _ = simulate(perf, timed, "semi-pd", ttft_slo_s, tpot_slo_s, split=split,
                              policy=policy, policy_params=params)
        return summarize(records, ttft_slo_s, tpot_slo_s)["slo_attainment"]

    if objective == "attainment":
        return lambda params: attainment(params, rate)
    top = max_rate or 4 * natural
    return lambda params: bisect_goodput(lambda r: attainment(params, r), top / 64, top)


def live_objective(target: str, policy: str, requests, ttft_slo_s: float, tpot_slo_s: float,
                   split: tuple[int, int] | None = None, rate: float | None = None):
    """params -> attainment, replaying against a live engine with the tuner running."""
    engine = EngineClient(target)
    runs = iter(range(1, 1_000_000))

    def objective(params):
        timed = requests if rate is None else scale_rate(requests, rate / mean_rate(requests))
        if split:
            engine.set_split(split, "search")
        tuner = Tuner(engine, TunerStore(":memory:"), Settings(ttft_slo_s, tpot_slo_s, policy, params,
                                                               True, 1.0), fresh=True)
        stop = threading.Event()
        thread = threading.Thread(target=tuner.run, args=(stop,), daemon=True)
        thread.start()
        try:  # fresh prompts each trial: no radix-cache hits from earlier ones
            records = asyncio.run(replay(target, timed, 1000, seed=100 + next(runs)))
        finally:
            stop.set()
            thread.join()
        return summarize(records, ttft_slo_s, tpot_slo_s)["slo_attainment"]

    return objective


def run_study(objective, policy, defaults: dict, trials: int, study: str, storage: str, seed: int = 0,
              show_progress: bool = False) -> dict:
    """Maximize `objective(params)` over the policy's SPACE in `trials` more trials of the study
    (created, or continued if it exists; a new one starts with the defaults). The best parameters
    (the defaults filled in), their value, the defaults' value, the trials so far and the seconds
    the trials took."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    found = optuna.create_study(study_name=study, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed))
    if not found.trials:
        found.enqueue_trial({k: v for k, v in defaults.items() if k in policy.SPACE})
    started = time.perf_counter()
    found.optimize(lambda trial: objective(defaults | suggest(trial, policy.SPACE)), n_trials=trials,
                   show_progress_bar=show_progress)
    return {"params": defaults | found.best_params, "value": found.best_value,
            "default_value": found.trials[0].value, "trials": len(found.trials),
            "wall_s": time.perf_counter() - started}


def best_params(study: str, storage: str) -> dict:
    import optuna

    try:
        return dict(optuna.load_study(study_name=study, storage=storage).best_params)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"no finished trials in study {study!r} at {storage}: {exc}") from None
