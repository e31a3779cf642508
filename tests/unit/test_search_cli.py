"""`semipd search`: an Optuna study in the simulator, its output read back by the other commands."""

from __future__ import annotations

import json

from policies import load_params
from tests.conftest import run_semipd as semipd
from tuner.launch import policy_params

WORKLOAD = "concat:poisson:rate=8,prompt=uniform(100,400),output=uniform(100,300),count=300;" \
           "poisson:rate=3,prompt=uniform(1200,2000),output=20,count=100,seed=2"


def test_search_writes_the_best_and_shares_one_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["search", "--policy", "semipd", "--workload", WORKLOAD, "--ttft-slo", "0.5", "--tpot-slo", "0.05",
              "--storage", storage, "--study", "s"]
    first = semipd(*common, "--trials", "4", "--out", str(tmp_path / "a.json"))
    assert first.returncode == 0, first.stderr
    result = json.loads((tmp_path / "a.json").read_text())
    assert result["trials"] == 4
    import optuna

    from policies import get_policy

    study = optuna.load_study(study_name="s", storage=storage)
    space = get_policy("semipd").SPACE
    assert study.trials[0].params == {k: v for k, v in load_params("semipd").items() if k in space}  # defaults first
    assert result["default_value"] == study.trials[0].value and result["value"] == study.best_value
    assert set(result["params"]) == set(load_params("semipd"))
    # a second process continues the same study (any Optuna RDB URL works the same way)
    second = semipd(*common, "--trials", "2", "--out", str(tmp_path / "b.json"))
    assert second.returncode == 0, second.stderr
    assert json.loads((tmp_path / "b.json").read_text())["trials"] == 6
    # the file is what `semipd simulate --policy NAME:FILE` reads
    sim = semipd("simulate", "--hardware", "a100-80gb", "--model", "llama-3-8b", "--split", "50,50", "--json",
                 "--policy", f"semipd:{tmp_path / 'a.json'}", "--workload", WORKLOAD,
                 "--ttft-slo", "0.5", "--tpot-slo", "0.05")
    assert sim.returncode == 0, sim.stderr
    assert json.loads(sim.stdout)["slo_attainment"] > 0
    # and `semipd tune --study` starts with the study's best parameters
    best = json.loads((tmp_path / "b.json").read_text())["params"]
    assert policy_params("semipd", study="s", storage=storage) == best


def test_search_bad_input():
    done = semipd("search", "--policy", "magic", "--workload", WORKLOAD, "--ttft-slo", "1", "--tpot-slo", "1",
                  "--out", "/tmp/x.json")
    assert done.returncode == 2 and "valid policies" in done.stderr
    done = semipd("search", "--policy", "mpc", "--workload", WORKLOAD, "--ttft-slo", "1", "--tpot-slo", "1",
                  "--trials", "0", "--out", "/tmp/x.json")
    assert done.returncode == 2 and "--trials must be at least 1" in done.stderr
