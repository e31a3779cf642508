"""`semipd search`: an Optuna study in the simulator, its output read back by the other commands."""

from __future__ import annotations

import json

import httpx

from tests.conftest import run_semipd as semipd


def test_search_against_a_live_engine(semipd_server, tmp_path):
    """Two trials replayed against the real engine with the tuner running in the search process."""
    done = semipd("search", "--policy", "threshold", "--target", semipd_server.url, "--split", "1,1",
                  "--workload", "poisson:rate=4,prompt=uniform(8,64),output=uniform(2,16),count=12",
                  "--ttft-slo", "1", "--tpot-slo", "0.5", "--trials", "2",
                  "--storage", f"sqlite:///{tmp_path / 'live.db'}", "--out", str(tmp_path / "live.json"))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "live.json").read_text())
    assert result["target"] == semipd_server.url and result["trials"] == 2 and 0 <= result["value"] <= 1
    httpx.post(semipd_server.url + "/semipd/split", json={"prefill": 1, "decode": 1})
