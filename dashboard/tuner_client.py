"""The dashboard's view of the tuner and the engine: their HTTP APIs, errors returned, not raised,
so that every panel can show what went wrong and the page keeps working."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from contract import (CACHE_HIT_RATE, KV_CAPACITY_TOKENS, KV_USED_TOKENS, TUNER_AUTH_ROUTE, TUNER_SETTINGS_ROUTE,
                      TUNER_SPLIT_ROUTE, TUNER_STATE_ROUTE, split_request)
from contract.access import bearer
from tuner.engine_metrics import MetricsError, parse, total

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
    return _call("GET", tuner.rstrip("/") + TUNER_STATE_ROUTE)


def health(tuner: str) -> Reply:
    """{"ok", "status", "key_required"}: whether the tuner's controls need its key."""
    return _call("GET", tuner.rstrip("/") + "/health")


def check_key(tuner: str, key: str) -> Reply:
    """Whether the tuner takes `key` on its control routes (an error naming why not)."""
    return _call("POST", tuner.rstrip("/") + TUNER_AUTH_ROUTE, json={}, headers=bearer(key))


def update_settings(tuner: str, key: str | None, **changes) -> Reply:
    return _call("POST", tuner.rstrip("/") + TUNER_SETTINGS_ROUTE, json=changes, headers=bearer(key))


def force_split(tuner: str, key: str | None, prefill: int, decode: int) -> Reply:
    return _call("POST", tuner.rstrip("/") + TUNER_SPLIT_ROUTE, json=split_request(prefill, decode, "dashboard"),
                 headers=bearer(key))


def engine_cache(engine: str) -> Reply:
    """KV cache use and radix cache hit rate from the engine's metrics."""
    try:
        response = httpx.get(engine.rstrip("/") + "/metrics", timeout=TIMEOUT_S)
        response.raise_for_status()
        snap = parse(response.text)
    except (httpx.HTTPError, MetricsError) as exc:
        return Reply(None, f"cannot read {engine}/metrics: {exc}")
    capacity = total(snap, KV_CAPACITY_TOKENS)
    used = total(snap, KV_USED_TOKENS)
    return Reply({"kv_used_tokens": used, "kv_capacity_tokens": capacity,
                  "kv_use": used / capacity if capacity else None,
                  "cache_hit_rate": total(snap, CACHE_HIT_RATE)})
