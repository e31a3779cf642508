"""Prometheus metrics of the semi-PD engine, next to SGLang's own (whose names stay unchanged).

Created in the owner process, which inherits SGLang's PROMETHEUS_MULTIPROC_DIR, so they appear on
the server's /metrics. Gauges keep the most recent value across processes.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from contract import (BATCH_SIZE, QUEUE_LENGTH, REPARTITIONS, SPLIT_SHARE, STEP_BUCKETS_S, STEP_TIME,
                      SWITCH_BUCKETS_S, SWITCH_LATENCY, WORKER_DEATHS)


class SemiPDMetrics:
    def __init__(self, labels: dict[str, str]):
        names = list(labels) + ["worker"]
        self.labels = labels
        self.split = Gauge(SPLIT_SHARE, "Compute share in force per worker (cores on CPU, "
                           "SM percent on GPU)", names, multiprocess_mode="mostrecent")
        self.step_time = Histogram(STEP_TIME, "Duration of one forward step per worker",
                                   names, buckets=STEP_BUCKETS_S)
        self.batch_size = Gauge(BATCH_SIZE, "Requests in the last step per worker", names,
                                multiprocess_mode="mostrecent")
        self.queue = Gauge(QUEUE_LENGTH, "Requests waiting for prefill (worker=prefill) or "
                           "decoding (worker=decode)", names, multiprocess_mode="mostrecent")
        self.repartitions = Counter(REPARTITIONS, "Split changes applied", list(labels))
        self.switch_latency = Histogram(SWITCH_LATENCY, "Time to apply a split change",
                                        list(labels), buckets=SWITCH_BUCKETS_S)
        self.worker_deaths = Counter(WORKER_DEATHS, "Prefill workers that died (exited, or hung and were "
                                     "killed) and were replaced", [*labels, "cause"])

    def _w(self, worker: str) -> dict:
        return {**self.labels, "worker": worker}

    def record_split(self, prefill: float, decode: float) -> None:
        self.split.labels(**self._w("prefill")).set(prefill)
        self.split.labels(**self._w("decode")).set(decode)

    def record_step(self, worker: str, seconds: float, batch_size: int) -> None:
        self.step_time.labels(**self._w(worker)).observe(seconds)
        self.batch_size.labels(**self._w(worker)).set(batch_size)

    def record_queues(self, waiting: int, running: int) -> None:
        self.queue.labels(**self._w("prefill")).set(waiting)
        self.queue.labels(**self._w("decode")).set(running)

    def record_worker_death(self, cause: str) -> None:
        self.worker_deaths.labels(**self.labels, cause=cause).inc()

    def record_switch(self, seconds: float) -> None:
        self.repartitions.labels(**self.labels).inc()
        self.switch_latency.labels(**self.labels).observe(seconds)
