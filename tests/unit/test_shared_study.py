"""Several searches sharing one Optuna study through one RDB (here a fresh SQLite file): started at
the same instant, exactly one creates the study and enqueues the defaults, and every trial lands in
the one study."""

from __future__ import annotations

import multiprocessing
from types import SimpleNamespace

import optuna
import pytest

from tuner.search import StorageError, open_study, run_study

POLICY = SimpleNamespace(SPACE={"x": (0.0, 1.0, "float"), "n": (1, 10, "int")})
DEFAULTS = {"x": 0.5, "n": 3, "not_searched": 7}
PROCESSES, TRIALS_EACH = 4, 5


def objective(params: dict) -> float:
    return params["x"] * params["n"] - 0.1 * abs(params["n"] - 4)


def search(storage: str, seed: int, start, results) -> None:
    start.wait()  # all processes open the study at the same instant
    found = run_study(objective, POLICY, DEFAULTS, TRIALS_EACH, "shared", storage, seed=seed)
    results.put(found)


def test_searches_started_at_once_share_one_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    context = multiprocessing.get_context("fork")  # no re-imports: the processes start within milliseconds
    start, results = context.Barrier(PROCESSES), context.Queue()
    processes = [context.Process(target=search, args=(storage, seed, start, results)) for seed in range(PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0] * PROCESSES
    reports = [results.get(timeout=5) for _ in processes]

    assert optuna.get_all_study_names(storage) == ["shared"]
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert len(trials) == PROCESSES * TRIALS_EACH
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials)
    searched_defaults = {"x": 0.5, "n": 3}
    assert [trial.params for trial in trials].count(searched_defaults) == 1
    defaults_value = objective(DEFAULTS)
    by_value = {trial.value: trial.params for trial in trials}
    for report in reports:  # each saw the trials finished by then; the defaults' may still have been running
        assert report["params"] == DEFAULTS | by_value[report["value"]]  # one trial's value and its parameters
        assert report["value"] >= defaults_value or report["default_value"] is None
        assert report["default_value"] in (None, defaults_value)

    # one more search continues the study: no second defaults trial, and its best is the best of all
    last = run_study(objective, POLICY, DEFAULTS, 1, "shared", storage)
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert len(trials) == last["trials"] == PROCESSES * TRIALS_EACH + 1
    assert [trial.params for trial in trials].count(searched_defaults) == 1
    assert last["value"] == max(trial.value for trial in trials)
    assert last["params"] == DEFAULTS | max(trials, key=lambda trial: trial.value).params
    assert last["default_value"] == defaults_value


def open_at_once(storage: str, start) -> None:
    start.wait()
    open_study("shared", storage, defaults={"x": 0.5, "n": 3})


def test_of_many_opening_a_new_study_at_once_one_enqueues_the_defaults(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    open_study("other", storage)  # the tables exist: only the study's creation races
    context = multiprocessing.get_context("fork")
    start = context.Barrier(PROCESSES)
    processes = [context.Process(target=open_at_once, args=(storage, start)) for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0] * PROCESSES
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert [trial.state for trial in trials] == [optuna.trial.TrialState.WAITING]  # the defaults, enqueued once


def test_a_bad_storage_url_is_named():
    with pytest.raises(StorageError, match="nonsense://x"):
        open_study("s", "nonsense://x")


def claim_the_defaults(storage: str, study: str, start, results) -> None:
    found = open_study(study, storage, defaults={"x": 0.5, "n": 3})
    start.wait()  # all ask at once: each would take the waiting defaults trial if it could
    trial = found.ask()
    try:
        found.tell(trial, objective({"x": trial.suggest_float("x", 0, 1), "n": trial.suggest_int("n", 1, 10)}))
        results.put("told")
    except Exception as error:  # a trial another process claimed too
        results.put(repr(error))


def test_the_enqueued_defaults_are_claimed_by_one_process_of_many(tmp_path):
    """Optuna claims a waiting trial by reading WAITING and then writing RUNNING; in SQLite, two
    processes could both claim it (before the fix, a third of these rounds did)."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    open_study("other", storage)
    context = multiprocessing.get_context("fork")
    for round_ in range(10):
        start, results = context.Barrier(2 * PROCESSES), context.Queue()
        processes = [context.Process(target=claim_the_defaults, args=(storage, f"s{round_}", start, results))
                     for _ in range(2 * PROCESSES)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
        assert [results.get(timeout=5) for _ in processes] == ["told"] * len(processes)
        trials = optuna.load_study(study_name=f"s{round_}", storage=storage).trials
        assert [trial.params for trial in trials].count({"x": 0.5, "n": 3}) == 1
