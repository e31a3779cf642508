"""The engine's HTTP API as the tuner uses it: the split in force, setting it, the metrics."""

from __future__ import annotations

import httpx

from contract import SPLIT_ROUTE, read_split_state, split_request
from contract.access import bearer
from tuner.engine_metrics import Snapshot, parse


class SplitRejected(RuntimeError):
    pass


class EngineClient:
    """The engine's HTTP API as the tuner uses it."""

    def __init__(self, url: str, admin_key: str | None = None, timeout_s: float = 5.0):
        self.url = url.rstrip("/")
        self.headers = bearer(admin_key)
        self.timeout_s = timeout_s

    def split(self) -> dict | None:
        """The split in force, or None for an engine without one (unified)."""
        response = httpx.get(self.url + SPLIT_ROUTE, headers=self.headers, timeout=self.timeout_s)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        state = response.json()
        read_split_state(state)  # ValueError on another shape
        return state

    def set_split(self, split: tuple[int, int], who: str) -> dict:
        response = httpx.post(self.url + SPLIT_ROUTE, headers=self.headers, timeout=self.timeout_s,
                              json=split_request(*split, who))
        if response.status_code != 200:
            raise SplitRejected(f"engine answered {response.status_code}: {response.text[:300]}")
        return response.json()

    def snapshot(self) -> Snapshot:
        response = httpx.get(self.url + "/metrics", timeout=self.timeout_s)
        response.raise_for_status()
        return parse(response.text)
