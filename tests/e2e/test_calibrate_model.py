"""`semipd calibrate-model` against a real semi-PD engine, and the simulator on what it fitted."""

from __future__ import annotations

import json
from functools import partial

import httpx

from simulator.perf_model import Fitted, Work, prefill_work
from tests.conftest import run_semipd

semipd = partial(run_semipd, timeout=600)


def test_calibrate_fits_the_engine_and_the_simulator_uses_it(semipd_server, tmp_path):
    out = tmp_path / "profile.json"
    done = semipd("calibrate-model", "--url", semipd_server.url, "--splits", "1,1", "--repeats", "2",
                  "--load-seconds", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "prefill on 50%" in done.stdout and "decode  on 50%" in done.stdout
    profile = Fitted.load(out)
    assert profile.units == 2 and profile.kv_capacity > 0 and profile.chunk_size == 64
    assert [share for share, _ in profile.prefill] == [0.5] and [share for share, _ in profile.decode] == [0.5]
    # the model predicts the steps it was fitted on (within 2x), and a larger batch is slower
    steps = json.loads(out.with_suffix(".steps.json").read_text())["measured"][0]["steps"]
    alone = sorted(s["end"] - s["start"] for s in steps
                   if s["worker"] == "prefill" and s["tokens"] == 64 and s["batch_size"] == 1 and not s["context"])
    assert alone, "no 64-token prefill was recorded"
    assert 0.5 < profile.step_time(prefill_work([(64, 0)]), 0.5) / alone[len(alone) // 2] < 2
    assert profile.step_time(Work(decode_batch=16, decode_context=1600), 0.5) > \
        profile.step_time(Work(decode_batch=1, decode_context=100), 0.5)
    # the engine's split is as it was
    assert httpx.get(semipd_server.url + "/semipd/split").json()["split"] == {"prefill": 1, "decode": 1}
    # the raw records refit to the same profile without an engine
    again = tmp_path / "again.json"
    refit = semipd("calibrate-model", "--from-steps", str(out.with_suffix(".steps.json")), "--out", str(again))
    assert refit.returncode == 0, refit.stderr
    assert Fitted.load(again) == profile
    sim = semipd("simulate", "--hardware", str(out), "--system", "semi-pd", "--split", "1,1", "--json",
                 "--workload", "poisson:rate=2,prompt=uniform(16,64),output=uniform(4,32),count=40",
                 "--ttft-slo", "1", "--tpot-slo", "0.2")
    assert sim.returncode == 0, sim.stderr
    assert json.loads(sim.stdout)["completed"] == 40


def test_calibrate_refuses_a_server_that_is_not_semi_pd(unified_server, tmp_path):
    done = semipd("calibrate-model", "--url", unified_server.url, "--out", str(tmp_path / "p.json"), timeout=120)
    assert done.returncode == 2 and "semi-pd" in done.stderr and "Traceback" not in done.stderr
