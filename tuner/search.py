"""Searching a policy's parameters with Optuna, on replayed traffic (`semipd search`).

A trial either simulates the workload with the policy and the trial's parameters (seconds per
trial) or replays it against a live engine with a Tuner running (minutes per trial). The objective
is the SLO attainment at a rate, or in the simulator the goodput (highest rate with >= 90%
attainment, by bisection). The first trial of a study is the policy's defaults, so the gain is
measured. Studies live in an Optuna RDB storage, which several processes (searches, tuners) can
share: a SQLite file on one machine, a PostgreSQL or MySQL URL across machines. `open_study` makes
that safe when they all start at once.
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


STORAGE_EXAMPLES = ("sqlite:///FILE.db, postgresql+psycopg2://user:password@host/db (pip install psycopg2-binary) "
                    "or mysql+pymysql://user:password@host/db (pip install pymysql)")
SQLITE_LOCK_WAIT_S = 60  # a SQLite writer waits this long for another process's lock before "database is locked"
OPEN_TRIES = 10
DEFAULTS_MARK = "defaults"  # user attribute of the trial of the policy's defaults


class StorageError(ValueError):
    """An Optuna storage URL that cannot be opened."""


def without_password(url: str) -> str:
    """`url` to show in a message: an RDB URL's password is a secret."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: nothing to hide
        return url


def open_storage(url: str):
    """The Optuna RDB storage at `url`, its tables created if missing. Several processes may open a
    fresh database at the same instant: they race to create its tables, and the losers ("table
    already exists") find them there when they try again."""
    import optuna
    from sqlalchemy import exc

    sqlite = url.startswith("sqlite")
    # SQLite has one writer at a time: the others wait for it rather than fail at once. The driver's
    # own transactions (isolation_level None: none) are replaced by serialize_sqlite_transactions'.
    engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_WAIT_S, "isolation_level": None}} if sqlite else {}
    failure = None
    for attempt in range(OPEN_TRIES):
        try:
            rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
            if sqlite:
                serialize_sqlite_transactions(rdb.engine)
            return rdb
        except (exc.ArgumentError, ImportError) as error:  # unparsable, unknown database, or its driver missing
            raise StorageError(f"bad Optuna storage URL {without_password(url)!r}: {error}; "
                               f"expected e.g. {STORAGE_EXAMPLES}") from None
        except (exc.OperationalError, exc.IntegrityError, optuna.exceptions.StorageInternalError) as error:
            failure = error
            time.sleep(0.05 * (attempt + 1))
    raise StorageError(f"cannot open the Optuna storage {without_password(url)!r}: {failure}")


def serialize_sqlite_transactions(engine) -> None:
    """Every transaction on `engine` takes SQLite's write lock when it begins. Optuna claims an
    enqueued trial by reading that it is WAITING and then writing RUNNING; its SELECT ... FOR UPDATE
    locks nothing in SQLite, so two processes could both claim the defaults trial and the second
    fail to tell it ("Cannot tell a COMPLETE trial"). With the lock taken at BEGIN, the second
    reads RUNNING and makes a trial of its own."""
    from sqlalchemy import event

    event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))


def open_study(study: str, storage: str, seed: int = 0, defaults: dict | None = None):
    """The Optuna study `study` (maximizing) in `storage`, created if missing. Many processes may
    open it at once: the database's unique study name lets exactly one create it, and only that one
    enqueues `defaults` (if given) as a trial, so they are measured once."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = open_storage(storage)
    sampler = optuna.samplers.TPESampler(seed=seed)
    try:
        created = optuna.create_study(study_name=study, storage=rdb, direction="maximize", sampler=sampler)
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=study, storage=rdb, sampler=sampler)
    if defaults is not None:
        created.enqueue_trial(defaults, user_attrs={DEFAULTS_MARK: True})
    return created


def run_study(objective, policy, defaults: dict, trials: int, study: str, storage: str, seed: int = 0,
              show_progress: bool = False) -> dict:
    """Maximize `objective(params)` over the policy's SPACE in `trials` more trials of the study
    (created, or continued if it exists; a new one starts with the defaults). The best parameters
    (the defaults filled in) and their value, the defaults' value (None while another process
    sharing the study still runs that trial), the trials so far and the seconds the trials took."""
    found = open_study(study, storage, seed, {k: v for k, v in defaults.items() if k in policy.SPACE})
    started = time.perf_counter()
    found.optimize(lambda trial: objective(defaults | suggest(trial, policy.SPACE)), n_trials=trials,
                   show_progress_bar=show_progress)
    wall_s = time.perf_counter() - started
    all_trials = found.trials
    # studies made before the mark existed have the defaults first
    defaults_trial = next((t for t in all_trials if t.user_attrs.get(DEFAULTS_MARK)), all_trials[0])
    best = found.best_trial  # one read: other processes may finish better trials meanwhile
    return {"params": defaults | best.params, "value": best.value, "default_value": defaults_trial.value,
            "trials": len(all_trials), "wall_s": wall_s}


def best_params(study: str, storage: str) -> dict:
    import optuna

    rdb = open_storage(storage)
    try:
        return dict(optuna.load_study(study_name=study, storage=rdb).best_params)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"no finished trials in study {study!r} at {without_password(storage)}: {exc}") from None
