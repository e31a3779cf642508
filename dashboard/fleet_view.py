"""The fleet view: every engine of a fleet (`semipd up --engines N`) on one table, each read from its
own tuner, and the router's own view of which engines are up.

Per engine: whether it serves (the router's health check, and whether its tuner reaches it), its
split, TTFT and TPOT p90 against the SLOs over the last windows, the share of requests within
both SLOs, its load and its goodput; and the fleet's goodput, their sum.
"""

from __future__ import annotations

import math

import httpx

from tuner.engine_metrics import parse

RECENT_WINDOWS = 5  # the tuner's windows averaged per engine (its tick is 1 to 2 s)
ROUTER_HEALTH = "smg_worker_health"  # sglang-router's gauge, 1 for a worker it counts healthy


def router_health(metrics_url: str) -> tuple[dict[str, bool], str | None]:
    """({engine URL: healthy} as SGLang's router sees them, from its Prometheus endpoint (open:
    it changes nothing), an error naming why not)."""
    try:
        text = httpx.get(metrics_url, timeout=5).text
        samples = parse(text).samples.get(ROUTER_HEALTH, [])
    except (httpx.HTTPError, ValueError) as exc:
        return {}, f"router metrics at {metrics_url} unreadable: {exc}"
    health = {}
    for labels, value in samples:
        url = next((v for v in labels.values() if v.startswith("http")), None)
        if url:
            health[url.rstrip("/")] = value >= 1
    return health, None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def engine_row(tuner_url: str, state: dict | None, error: str | None, health: dict[str, bool]) -> dict:
    """One engine's line of the fleet table, from its tuner's /state (None with `error` when the
    tuner did not answer) and the router's health map."""
    if state is None:
        return {"engine": "?", "tuner": tuner_url, "router": "-", "serving": f"tuner unreachable: {error}"}
    engine = state["engine"].rstrip("/")
    recent = state["windows"][-RECENT_WINDOWS:]
    ttft_ok, tpot_ok = _mean(w["ttft_attainment"] for w in recent), _mean(w["tpot_attainment"] for w in recent)
    rate = _mean(w["rate"] for w in recent) or 0.0
    # per-metric histograms: both SLOs together are met by at least this share
    both = None if ttft_ok is None else max(0.0, ttft_ok + (1.0 if tpot_ok is None else tpot_ok) - 1.0)
    split = state["split"]["split"] if state.get("split") else None
    settings = state["settings"]
    return {"engine": engine, "tuner": tuner_url,
            "router": {True: "healthy", False: "down"}.get(health.get(engine), "not listed"),
            "serving": "yes" if state["status"] == "ok" or state["status"].startswith("observing") else state["status"],
            "split": f"{split['prefill']},{split['decode']}" if split else "-",
            "TTFT p90 / SLO": _ratio(_mean(w["ttft_p90_s"] for w in recent), settings["ttft_slo_s"]),
            "TPOT p90 / SLO": _ratio(_mean(w["tpot_p90_s"] for w in recent), settings["tpot_slo_s"]),
            "within both SLOs": None if both is None else round(both, 3),
            "requests/s": round(rate, 2),
            "queued": _mean(w["waiting"] for w in recent), "decoding": _mean(w["running"] for w in recent),
            "goodput (req/s)": round(rate * (both or 0.0), 2)}


def _ratio(value: float | None, slo: float) -> float | None:
    return None if value is None else round(value / slo, 2)


def fleet_goodput(rows: list[dict]) -> tuple[float, float]:
    """(goodput, arrival rate) of the whole fleet, req/s: the engines' sums."""
    return (sum(r.get("goodput (req/s)", 0.0) for r in rows), sum(r.get("requests/s", 0.0) for r in rows))
