"""Metrics from a Prometheus server's HTTP API instead of the engine's /metrics: the same series
(the ones the tuner reads), as Prometheus last scraped them from the engine's instance."""

from __future__ import annotations

from urllib.parse import urlparse

import httpx

from contract import QUEUE_LENGTH, STEP_TIME, TPOT, TTFT
from tuner.engine_metrics import MetricsError, Snapshot

SERIES = (TTFT + "_bucket", TPOT + "_bucket", STEP_TIME + "_sum", QUEUE_LENGTH)
LOOKBACK = "1m"  # series not scraped within this are gone (the engine is down)


class PrometheusSource:
    def __init__(self, prometheus_url: str, engine_url: str, timeout_s: float = 5.0):
        self.url = prometheus_url.rstrip("/")
        self.instance = urlparse(engine_url).netloc  # Prometheus labels a target host:port
        self.timeout_s = timeout_s

    def snapshot(self) -> Snapshot:
        # A range selector, so that each sample comes with the time Prometheus scraped it: the
        # window between two snapshots is then the span between two scrapes of the engine, as it is
        # when the tuner scrapes the engine itself.
        query = f'{{__name__=~"{"|".join(SERIES)}",instance="{self.instance}"}}[{LOOKBACK}]'
        response = httpx.get(self.url + "/api/v1/query", params={"query": query}, timeout=self.timeout_s)
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise MetricsError(f"Prometheus answered {body.get('status')}: {body.get('error', '')}")
        samples: dict[str, list] = {}
        scraped = 0.0
        for series in body["data"]["result"]:
            labels = dict(series["metric"])
            name = labels.pop("__name__")
            stamp, value = series["values"][-1]
            scraped = max(scraped, float(stamp))
            samples.setdefault(name, []).append((labels, float(value)))
        if not samples:
            raise MetricsError(f"Prometheus at {self.url} has no series for instance {self.instance} "
                               f"in the last {LOOKBACK}")
        return Snapshot(scraped, samples)
