"""A real tuner on a real engine under load: reading its state, and the load that shifts from
decode-heavy to prefill-heavy (used with the tuner reading the engine and reading Prometheus)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx

from loadtest.load_generator import replay
from loadtest.workload import Request
from simulator.calibrate import flush_cache

def get(url: str, path: str = "/state") -> dict:
    return httpx.get(url + path, timeout=10).json()


def state_when(url: str, condition, timeout_s: float, what: str) -> dict:
    """The tuner's state, once `condition(state)` holds."""
    return wait_for(lambda: (lambda s: s if condition(s) else None)(get(url)), timeout_s, what)


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def load(url: str, requests, seed: int, stop: threading.Event):
    """Replay `requests` again and again (fresh prompts each round) until `stop`."""
    failures = []
    round_ = 0
    while not stop.is_set():
        records = asyncio.run(replay(url, requests, 1000, seed=seed + round_))
        failures += [r.error for r in records if not r.ok]
        round_ += 1
    return failures


def run_phase(url: str, requests, seed: int, seconds: float, tuner_url: str, until) -> tuple[dict, float]:
    """Switch the tuner on and load until `until(tuner state)`; then switch it off while the load
    drains. The drain's windows belong to neither this load nor the next (with no new arrivals
    TPOT stops while TTFT still misses, or the reverse), so this load starts after a tick that
    closes them. Returns that state and the time the load started."""
    stop, result = threading.Event(), {}
    thread = threading.Thread(target=lambda: result.setdefault("failures", load(url, requests, seed, stop)))
    now = time.time()
    state_when(tuner_url, lambda s: s["windows"] and s["windows"][-1]["time"] > now, 30, "a tick")
    httpx.post(tuner_url + "/settings", json={"enabled": True}, timeout=10).raise_for_status()
    started = time.time()
    thread.start()
    try:
        return state_when(tuner_url, until, seconds, "the split to move"), started
    finally:
        stop.set()  # first: a tuner that fails to answer must not leave the load running
        httpx.post(tuner_url + "/settings", json={"enabled": False}, timeout=10).raise_for_status()
        thread.join(timeout=120)
        assert result.get("failures") == [], result.get("failures")


def ticks_to_react(state: dict, metric: str, started: float) -> int:
    """Ticks from the first window of this load in which `metric` missed its SLO to the move
    that answered it; 0 when the move came first (mpc counts the requests still queued)."""
    moved = [d for d in state["decisions"] if d["applied"]][-1]["time"]
    slo = state["settings"][f"{metric}_slo_s"]
    missed = [w["time"] for w in state["windows"]
              if started < w["time"] <= moved and (w[f"{metric}_p90_s"] or 0) > slo]
    return sum(1 for w in state["windows"] if missed and missed[0] <= w["time"] <= moved)


MAX_TICKS = 4  # from the first window that missed its SLO to the move that answers it


def shifting_load_tuner_args(url: str, folder: Path) -> list[str]:
    """`semipd tune` flags for the shifting load: SLOs from this engine (a long prompt alone takes
    t_long; short prompts meet TTFT and long ones miss it; TPOT below what a busy decode can do)
    and mpc reacting to a single window."""
    flush_cache(url)  # a prompt the radix cache has seen would make t_long, and the SLO, too small
    t_long = asyncio.run(replay(url, [Request(0.0, 1500, 1)], 1000, seed=7))[0].ttft_s
    params = folder / "mpc.json"
    params.write_text(json.dumps({"overlap": 1, "window": 1, "min_samples": 2, "cooldown": 0,
                                  "min_pct": 50, "max_move_pct": 100, "probe_after": 1}))
    return ["--policy", "mpc", "--params", str(params), "--interval", "1",
            "--ttft-slo", f"{0.6 * t_long:.3f}", "--tpot-slo", "0.001"]


def shifting_load(url: str, tuner_url: str) -> list[dict]:
    """Decode-heavy load until the decode worker has both cores, then prefill-heavy until the
    prefill worker has; each move within MAX_TICKS ticks of the first window that missed; no
    request failed. Returns the applied decisions."""
    phases = (("decode", "tpot", [Request(0.05 * i, 8, 48) for i in range(24)], 100),
              ("prefill", "ttft", [Request(0.02 * i, 1500, 1) for i in range(6)], 200))
    flush_cache(url)  # the same prompts as any earlier run of this load: none of them cached
    for worker, metric, requests, seed in phases:
        state, started = run_phase(url, requests, seed, 90, tuner_url,
                                   lambda s: s["split"] and s["split"]["split"][worker] == 2)
        ticks = ticks_to_react(state, metric, started)
        assert ticks <= MAX_TICKS, (f"{metric.upper()} missed {ticks} ticks before the {worker} worker grew; "
                                    f"the windows:\n" + "\n".join(map(str, state["windows"][-ticks - 2:])))
        print(f"{worker}-heavy load: the {worker} worker grew {ticks} ticks after {metric.upper()} first missed")
    decisions = [d for d in get(tuner_url)["decisions"] if d["applied"]]
    assert decisions[0]["new"][1] == 2 and decisions[-1]["new"][0] == 2
    assert all(d["who"] == "policy mpc" and d["reason"] for d in decisions)
    return decisions
