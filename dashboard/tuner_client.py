"""The dashboard's view of the tuner and the engine: their HTTP APIs, errors returned, not raised,
so that every panel can show what went wrong and the page keeps working."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

TIMEOUT_S = 5.0


@dataclass
class Reply:
    data: dict | None
    error: str | None = None


def _call(method: str, url: str, **kwargs) -> Reply:
    try:
        response = httpx.request(method, url, timeout=TIMEOUT_S, **kwargs)
    except httpx.HTTPError as exc:
        return Reply(None, f"cannot reach {url}: {exc}")
    try:
        body = response.json()
    except ValueError:
        return Reply(None, f"{url} answered {response.status_code} with a body that is not JSON")
    if response.status_code != 200:
        return Reply(body, f"{url} answered {response.status_code}: {body.get('error', body)}")
    return Reply(body)


def state(tuner: str) -> Reply:
    return _call("GET", tuner.rstrip("/") + "/state")


def update_settings(tuner: str, **changes) -> Reply:
    return _call("POST", tuner.rstrip("/") + "/settings", json=changes)


def force_split(tuner: str, prefill: int, decode: int) -> Reply:
    return _call("POST", tuner.rstrip("/") + "/split", json={"prefill": prefill, "decode": decode, "who": "dashboard"})


def engine_cache(engine: str) -> Reply:
    """KV cache use and radix cache hit rate from the engine's metrics."""
    from tuner.prom_metrics import MetricsError, parse, total

    try:
        response = httpx.get(engine.rstrip("/") + "/metrics", timeout=TIMEOUT_S)
        response.raise_for_status()
        snap = parse(response.text)
    except (httpx.HTTPError, MetricsError) as exc:
        return Reply(None, f"cannot read {engine}/metrics: {exc}")
    capacity = total(snap, "sglang:max_total_num_tokens")
    used = total(snap, "sglang:kv_used_tokens")
    return Reply({"kv_used_tokens": used, "kv_capacity_tokens": capacity,
                  "kv_use": used / capacity if capacity else None,
                  "cache_hit_rate": total(snap, "sglang:cache_hit_rate")})
