"""The tuner service: metrics windows, settings, faults, and moving a real engine's split."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from loadtest.load_generator import replay
from loadtest.workload import Request
from policies import load_params
from tests.conftest import free_port, start_semipd_server, start_tuner
from tests.fault_proxy import FaultProxy
from tests.live_tuning import get, shifting_load, shifting_load_tuner_args, state_when, wait_for
from tuner.engine_metrics import MetricsError, observe, parse

EXPOSITION = """# HELP sglang:time_to_first_token_seconds x
sglang:time_to_first_token_seconds_bucket{le="0.1",is_streaming="true"} {a}
sglang:time_to_first_token_seconds_bucket{le="0.5",is_streaming="true"} {b}
sglang:time_to_first_token_seconds_bucket{le="+Inf",is_streaming="true"} {c}
sglang:time_to_first_token_seconds_bucket{le="0.1",is_streaming="false"} 1
sglang:time_to_first_token_seconds_bucket{le="0.5",is_streaming="false"} 1
sglang:time_to_first_token_seconds_bucket{le="+Inf",is_streaming="false"} 1
semipd:step_time_seconds_sum{worker="prefill"} {busy}
semipd:queue_length{worker="prefill"} 3.0
semipd:queue_length{worker="decode"} 7.0
"""


def text(a, b, c, busy):
    return EXPOSITION.replace("{a}", str(a)).replace("{b}", str(b)).replace("{c}", str(c)).replace("{busy}", str(busy))


def test_a_window_is_the_difference_of_two_scrapes():
    before, after = parse(text(10, 20, 20, 5.0), at=100.0), parse(text(12, 30, 31, 6.0), at=102.0)
    obs = observe(before, after, (1, 1), 2, 0.5, 0.1)
    assert obs.ttft.bounds == (0.1, 0.5) and obs.ttft.counts == (2, 8, 1)  # label sets summed, then differenced
    assert obs.prefill_busy == pytest.approx(0.5) and obs.window_s == pytest.approx(2.0)
    assert obs.arrival_rate == pytest.approx(5.5) and (obs.waiting, obs.running) == (3, 7)
    restarted = observe(after, parse(text(1, 2, 2, 0.2), at=104.0), (1, 1), 2, 0.5, 0.1)
    assert restarted.ttft.counts == (2, 1, 0)  # counters went down: the new scrape alone
    with pytest.raises(MetricsError, match="line 1"):
        parse("<html>not metrics</html>")


def test_settings_are_checked_persisted_and_an_unreachable_engine_is_reported(tmp_path):
    store = tmp_path / "tuner.db"
    dead = f"http://127.0.0.1:{free_port()}"
    tuner = start_tuner(dead, store, "--policy", "semipd", "--ttft-slo", "1", "--tpot-slo", "0.1", "--interval", "0.2")
    try:
        state = state_when(tuner.url, lambda s: s["failures"] >= 2, 20, "failed reads")
        assert state["status"].startswith("engine unreachable") and state["split"] is None
        assert any(e["kind"] == "engine unreachable" for e in state["events"])
        for body, message in (({"ttft_slo_s": -1}, "ttft_slo_s must be a number of seconds in (0, 3600)"),
                              ({"policy": "magic"}, "valid policies: static, semipd, threshold, mpc"),
                              ({"params": {"max_steps": 99}}, "out of range [1, 10]"),
                              ({"colour": "red"}, "unknown setting")):
            answer = httpx.post(tuner.url + "/settings", json=body, timeout=10)
            assert answer.status_code == 400 and message in answer.json()["error"]
        assert get(tuner.url)["settings"]["ttft_slo_s"] == 1.0  # nothing changed
        ok = httpx.post(tuner.url + "/settings", json={"tpot_slo_s": 0.2, "policy": "mpc", "enabled": False}, timeout=10)
        assert ok.status_code == 200 and ok.json()["settings"]["params"] == load_params("mpc")
        assert httpx.post(tuner.url + "/split", json={"prefill": 1, "decode": 1}, timeout=10).status_code == 502
        assert "semipd_tuner_read_failures_total" in httpx.get(tuner.url + "/metrics", timeout=10).text
    finally:
        tuner.stop()
    again = start_tuner(dead, store, "--policy", "semipd", "--ttft-slo", "9", "--tpot-slo", "9")
    try:  # a restart resumes the settings the operator made, not the command line's
        state = get(again.url)
        assert state["resumed"] and state["settings"]["policy"] == "mpc" and state["settings"]["tpot_slo_s"] == 0.2
        assert state["settings"]["enabled"] is False
    finally:
        again.stop()


def test_the_tuner_moves_the_split_toward_the_phase_that_misses(semipd_server, tmp_path):
    url = semipd_server.url
    tuner = start_tuner(url, tmp_path / "t.db", *shifting_load_tuner_args(url, tmp_path))
    try:
        shifting_load(url, tuner.url)
    finally:
        tuner.stop()
        httpx.post(url + "/semipd/split", json={"prefill": 1, "decode": 1})


def test_faults_garbage_metrics_and_rejected_splits(semipd_server, tmp_path):
    proxy = FaultProxy(semipd_server.url)
    tuner = start_tuner(proxy.url, tmp_path / "t.db", "--policy", "static", "--ttft-slo", "1", "--tpot-slo", "1",
                        "--interval", "0.3")
    try:
        wait_for(lambda: get(tuner.url)["status"] == "ok", 20, "a first good read")
        proxy.garbage_metrics = True
        state = state_when(tuner.url, lambda s: s["status"].startswith("metrics unreadable"), 20,
                           "the garbage to be reported")
        assert "not a Prometheus sample" in state["status"]
        proxy.garbage_metrics = False
        wait_for(lambda: get(tuner.url)["status"] == "ok", 30, "recovery")
        assert any(e["kind"] == "recovered" for e in get(tuner.url)["events"])
        proxy.reject_splits = True
        answer = httpx.post(tuner.url + "/split", json={"prefill": 2, "decode": 1}, timeout=10)
        assert answer.status_code == 502 and "frozen" in answer.json()["error"]
        rejected = get(tuner.url)["decisions"][-1]
        assert rejected["applied"] is False and "403" in rejected["error"]
        invalid = httpx.post(tuner.url + "/split", json={"prefill": 3, "decode": 1}, timeout=10)
        assert invalid.status_code == 400 and "from 1 to 2" in invalid.json()["error"]
        assert get(semipd_server.url, "/semipd/split")["split"] == {"prefill": 1, "decode": 1}  # untouched
        assert get(tuner.url, "/health")["ok"]
    finally:
        tuner.stop()
        proxy.close()


def test_engine_killed_and_restarted_under_the_tuner(tiny_model, tmp_path):
    port = free_port()
    engine = start_semipd_server(tiny_model, tmp_path, "--mode", "semi-pd", "--split", "1,1", port=port)
    tuner = start_tuner(engine.url, tmp_path / "t.db", "--policy", "mpc", "--ttft-slo", "1", "--tpot-slo", "1",
                        "--interval", "0.5")
    try:
        wait_for(lambda: get(tuner.url)["status"] == "ok", 30, "a first good read")
        engine.stop()
        state = state_when(tuner.url, lambda s: s["status"].startswith("engine unreachable"), 30,
                           "the outage to be reported")
        assert state["outage_since"] is not None
        engine = start_semipd_server(tiny_model, tmp_path, "--mode", "semi-pd", "--split", "1,1", port=port)
        state = state_when(tuner.url, lambda s: s["status"] == "ok", 60, "recovery")
        assert any(e["kind"] == "recovered" for e in state["events"]) and tuner.process.poll() is None
        asyncio.run(replay(engine.url, [Request(0.0, 16, 8)] * 4, 1000))
        wait_for(lambda: get(tuner.url)["windows"], 20, "windows after the restart")
    finally:
        tuner.stop()
        engine.stop()


def test_a_unified_engine_is_observed_and_never_tuned(unified_server, tmp_path):
    tuner = start_tuner(unified_server.url, tmp_path / "t.db", "--policy", "mpc", "--ttft-slo", "0.001",
                        "--tpot-slo", "0.001", "--interval", "0.5")
    try:
        asyncio.run(replay(unified_server.url, [Request(0.05 * i, 64, 8) for i in range(8)], 1000, seed=11))
        state = state_when(tuner.url, lambda s: any(w["ttft_count"] for w in s["windows"]), 30, "a window with traffic")
        assert state["status"].startswith("observing only") and state["split"] is None
        assert state["decisions"] == [] and state["counts"]["decisions"] == 0  # SLOs missed, nothing to move
        answer = httpx.post(tuner.url + "/split", json={"prefill": 1, "decode": 1}, timeout=10)
        assert answer.status_code == 409 and "no split to set" in answer.json()["error"]
        assert "semipd_tuner_engine_up 1" in httpx.get(tuner.url + "/metrics", timeout=10).text
    finally:
        tuner.stop()
