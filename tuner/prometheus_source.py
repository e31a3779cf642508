"""Metrics from a Prometheus server's HTTP API instead of the engine's /metrics: the same series
(the ones the tuner reads), as Prometheus last scraped them from the engine's instance."""

from __future__ import annotations

import time
from urllib.parse import urlparse

import httpx

from tuner.prom_metrics import QUEUE, STEP_TIME, TPOT, TTFT, MetricsError, Snapshot

SERIES = (TTFT + "_bucket", TPOT + "_bucket", STEP_TIME + "_sum", QUEUE)


class PrometheusSource:
    def __init__(self, prometheus_url: str, engine_url: str, timeout_s: float = 5.0):
        self.url = prometheus_url.rstrip("/")
        self.instance = urlparse(engine_url).netloc  # Prometheus labels a target host:port
        self.timeout_s = timeout_s

    def snapshot(self) -> Snapshot:
        query = f'{{__name__=~"{"|".join(SERIES)}",instance="{self.instance}"}}'
        response = httpx.get(self.url + "/api/v1/query", params={"query": query}, timeout=self.timeout_s)
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise MetricsError(f"Prometheus answered {body.get('status')}: {body.get('error', '')}")
        samples: dict[str, list] = {}
        stamp = time.time()
        for series in body["data"]["result"]:
            labels = dict(series["metric"])
            name = labels.pop("__name__")
            stamp, value = float(series["value"][0]), float(series["value"][1])
            samples.setdefault(name, []).append((labels, value))
        if not samples:
            raise MetricsError(f"Prometheus at {self.url} has no series for instance {self.instance} yet")
        return Snapshot(stamp, samples)
