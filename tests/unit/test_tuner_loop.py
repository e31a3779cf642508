"""The tuner's control loop in-process, with an engine we script: tick, back-off, recovery, resume.

The engine here is a stand-in for the HTTP client (the same three calls EngineClient makes); the
policies, the metrics parsing and the SQLite store are the real ones. The same loop against a
real engine is tests/e2e/test_tuner_service.py.
"""

from __future__ import annotations

import httpx
import pytest

from contract import LATENCY_BUCKETS_S, QUEUE_LENGTH, STEP_TIME, TPOT, TTFT, split_state
from tuner.control_loop import MAX_BACKOFF_S, OBSERVING, NothingToTune, Settings, Tuner
from tuner.engine_client import SplitRejected
from tuner.engine_metrics import MetricsError, parse
from tuner.store import TunerStore


def exposition(ttfts: list[float], tpots: list[float], busy_s=(0.0, 0.0), waiting=0, running=0) -> str:
    """Cumulative histograms as an engine's /metrics writes them."""
    lines = []
    for name, samples in ((TTFT, ttfts), (TPOT, tpots)):
        for bound in LATENCY_BUCKETS_S:
            lines.append(f'{name}_bucket{{le="{bound}"}} {sum(s <= bound for s in samples)}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {len(samples)}')
        lines.append(f"{name}_count {len(samples)}")
    for worker, busy in zip(("prefill", "decode"), busy_s):
        lines.append(f'{STEP_TIME}_sum{{worker="{worker}"}} {busy}')
    lines.append(f'{QUEUE_LENGTH}{{worker="prefill"}} {waiting}')
    lines.append(f'{QUEUE_LENGTH}{{worker="decode"}} {running}')
    return "\n".join(lines) + "\n"


class ScriptedEngine:
    """What the tuner calls on an engine; each snapshot advances the clock by one 2 s window."""

    url = "http://engine.test"

    def __init__(self, split=(1, 1), units=2, unified=False):
        self.split_in_force, self.units, self.unified = split, units, unified
        self.ttfts: list[float] = []
        self.tpots: list[float] = []
        self.clock = 1000.0
        self.down: Exception | None = None
        self.reject: str | None = None
        self.applied: list[tuple] = []
        self.history: list[dict] = []

    def split(self):
        if self.down:
            raise self.down
        if self.unified:
            return None
        return split_state(*self.split_in_force, backend="cpu", unit="cores", units=self.units,
                           valid=f"1 to {self.units}", history=self.history)

    def set_split(self, split, who):
        if self.reject:
            raise SplitRejected(self.reject)
        self.applied.append((tuple(split), who))
        self.split_in_force = tuple(split)
        return {"applied": {}}

    def snapshot(self):
        if self.down:
            raise self.down
        self.clock += 2.0
        return parse(exposition(self.ttfts, self.tpots), at=self.clock)

    def serve(self, n: int, ttft: float, tpot: float) -> None:
        self.ttfts += [ttft] * n
        self.tpots += [tpot] * n


def tuner(tmp_path, engine, policy="static", params=None, fresh=False, name="t.db") -> Tuner:
    settings = Settings(ttft_slo_s=0.5, tpot_slo_s=0.1, policy=policy, params=params or {})
    return Tuner(engine, TunerStore(str(tmp_path / name)), settings, fresh=fresh)


def test_first_tick_only_opens_a_window_then_a_policy_moves_the_split(tmp_path):
    engine = ScriptedEngine(split=(1, 1), units=4)
    t = tuner(tmp_path, engine, params={"prefill_pct": 75, "decode_pct": 25})
    assert t.tick() == 2.0 and engine.applied == [] and t.windows == type(t.windows)()
    engine.serve(10, 0.2, 0.05)
    assert t.tick() == 2.0
    assert engine.applied == [((3, 1), "policy static")]
    window = t.windows[-1]
    assert window["ttft_count"] == 10 and window["ttft_attainment"] == 1.0 and window["split"] == [1, 1]
    decision = t.store.decisions()[-1]
    assert decision["applied"] and decision["new"] == [3, 1] and decision["old"] == [1, 1]


def test_failed_reads_back_off_and_recovery_starts_a_fresh_window(tmp_path):
    engine = ScriptedEngine()
    t = tuner(tmp_path, engine, params={"prefill_pct": 100, "decode_pct": 50})
    t.tick()
    engine.down = httpx.ConnectError("refused")
    waits = [t.tick() for _ in range(6)]
    assert waits == [4.0, 8.0, 16.0, MAX_BACKOFF_S, MAX_BACKOFF_S, MAX_BACKOFF_S]
    assert t.status.startswith("engine unreachable") and t.failures == 6 and engine.applied == []
    engine.down = None
    engine.serve(5, 0.1, 0.01)
    assert t.tick() == 2.0 and t.status == "ok" and t.failures == 0
    assert [e["kind"] for e in t.store.events()][-1] == "recovered"
    # the engine may have restarted: the counts since the outage are not a window of this tuner
    assert not t.windows and engine.applied == []
    engine.serve(5, 0.1, 0.01)
    t.tick()
    assert len(t.windows) == 1 and engine.applied == [((2, 1), "policy static")]


def test_unreadable_metrics_are_a_failure_not_a_crash(tmp_path):
    engine = ScriptedEngine()
    t = tuner(tmp_path, engine)
    engine.down = MetricsError("line 3 is not a Prometheus sample")
    assert t.tick() == 4.0 and t.status.startswith("metrics unreadable")


def test_a_rejected_or_out_of_range_split_is_recorded_and_not_applied(tmp_path):
    engine = ScriptedEngine(units=2)
    t = tuner(tmp_path, engine, params={"prefill_pct": 100, "decode_pct": 50})
    engine.reject = "engine answered 400: out of range"
    t.tick()
    engine.serve(3, 0.1, 0.01)
    t.tick()
    last = t.store.decisions()[-1]
    assert not last["applied"] and "out of range" in last["error"] and t.counts["rejected"] == 1
    with pytest.raises(ValueError, match="whole number from 1 to 2"):
        t.force_split(3, 1)
    assert engine.applied == []


def test_settings_and_policy_state_resume_after_a_restart(tmp_path):
    engine = ScriptedEngine()
    first = tuner(tmp_path, engine, policy="mpc")
    first.update_settings({"ttft_slo_s": 0.25, "enabled": False})
    first.policy_state = {"seen": 3}
    first.store.put("policy_state", first.policy_state)
    again = tuner(tmp_path, engine, policy="static")
    assert again.resumed and again.settings.policy == "mpc" and again.settings.ttft_slo_s == 0.25
    assert not again.settings.enabled and again.policy_state == {"seen": 3}
    # switched back on, the policy starts afresh: what it gathered before may no longer hold
    again.update_settings({"enabled": True})
    assert again.policy_state == {}
    fresh = tuner(tmp_path, engine, policy="static", fresh=True)
    assert not fresh.resumed and fresh.settings.policy == "static"


def test_bad_settings_name_the_value_and_change_nothing(tmp_path):
    t = tuner(tmp_path, ScriptedEngine())
    for change, fragment in (({"ttft_slo_s": -1}, "ttft_slo_s must be"), ({"policy": "magic"}, "valid policies"),
                             ({"windows": 3}, "unknown setting"), ({"enabled": "yes"}, "true or false")):
        with pytest.raises(ValueError, match=fragment):
            t.update_settings(change)
    assert t.settings.ttft_slo_s == 0.5 and t.settings.policy == "static" and t.settings.enabled


def test_a_unified_engine_is_observed_and_never_split(tmp_path):
    engine = ScriptedEngine(unified=True)
    t = tuner(tmp_path, engine, params={"prefill_pct": 100, "decode_pct": 50})
    t.tick()
    engine.serve(4, 2.0, 1.0)  # both SLOs missed
    t.tick()
    assert t.status == OBSERVING and len(t.windows) == 1 and engine.applied == []
    with pytest.raises(NothingToTune):
        t.force_split(1, 1)


def test_a_source_that_has_not_scraped_since_the_last_tick_is_skipped(tmp_path):
    engine = ScriptedEngine()

    class StaleSource:  # Prometheus answering with the scrape it already gave
        url = "http://prometheus.test"
        snap = parse(exposition([0.1], [0.01]), at=50.0)

        def snapshot(self):
            return self.snap

    t = Tuner(engine, TunerStore(str(tmp_path / "p.db")), Settings(0.5, 0.1, "static"), source=StaleSource())
    t.tick()
    t.tick()
    assert not t.windows and t.status == "ok"


def test_worker_deaths_in_the_engine_history_become_events_once(tmp_path):
    import time

    engine = ScriptedEngine()
    engine.history = [{"time": time.time() - 60, "new": "2,2", "who": "prefill worker died (old)",
                       "event": "prefill worker died"}]
    t = tuner(tmp_path, engine)
    t.tick()
    assert not [e for e in t.store.events() if "worker" in e["kind"]]  # before the tuner started
    engine.history += [{"time": time.time(), "new": "1,1", "who": "admin"},
                       {"time": time.time() + 0.001, "new": "2,2", "who": "prefill worker died (code -9)",
                        "event": "prefill worker died"},
                       {"time": time.time() + 0.002, "new": "1,1", "who": "a new prefill worker is ready",
                        "event": "prefill worker replaced"}]
    t.tick()
    t.tick()  # read again: not reported twice
    events = [(e["kind"], e["message"]) for e in t.store.events() if "worker" in e["kind"]]
    assert events == [("prefill worker died", "engine: prefill worker died (code -9) (split 2,2)"),
                      ("prefill worker replaced", "engine: a new prefill worker is ready (split 1,1)")]
