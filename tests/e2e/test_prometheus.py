"""A real Prometheus (Debian's package) scraping a real engine and tuner: `semipd tune --prometheus`
decides as the tuner reading the engine itself does, and every query of the Grafana dashboard
finds its series."""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import httpx
import pytest
import yaml

from contract import QUEUE_LENGTH, STEP_TIME, TPOT, TTFT
from loadtest.load_generator import replay
from loadtest.workload import Request
from stack.prometheus_config import scrape_config
from stack.server_process import ServerProcess
from tests.conftest import REPO, free_port, start_tuner
from tests.live_tuning import get, shifting_load, shifting_load_tuner_args, wait_for
from tuner.engine_client import EngineClient
from tuner.engine_metrics import cumulative_buckets, total
from tuner.prometheus_source import PrometheusSource


@pytest.fixture(scope="module")
def prometheus(semipd_server, tmp_path_factory):
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus is needed (`make test` installs it)"
    folder = tmp_path_factory.mktemp("prometheus")
    tuner_port, port = free_port(), free_port()
    engine = semipd_server.url.removeprefix("http://")
    # the tuner below ticks every second
    config = scrape_config([engine], [f"127.0.0.1:{tuner_port}"], interval="1s")
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    server = ServerProcess([binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
                            f"--web.listen-address=127.0.0.1:{port}"], f"http://127.0.0.1:{port}", folder / "prometheus.log")
    server.start(timeout_s=60, health_path="/-/ready")
    server.tuner_port = tuner_port  # the port Prometheus scrapes the tuner on
    yield server
    server.stop()


def query(prometheus, expr: str) -> list:
    body = httpx.get(prometheus.url + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def targets_up(prometheus) -> dict:
    active = httpx.get(prometheus.url + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    return {t["labels"]["job"]: t["health"] for t in active}


def traffic(url: str, seed: int) -> None:
    asyncio.run(replay(url, [Request(0.05 * i, 64, 16) for i in range(8)], 1000, seed=seed))


def test_prometheus_scrapes_engine_and_tuner_and_grafana_finds_every_series(prometheus, semipd_server, tmp_path):
    tuner = start_tuner(semipd_server.url, tmp_path / "t.db", "--policy", "static", "--ttft-slo", "1",
                        "--tpot-slo", "0.1", "--interval", "1", "--off", port=prometheus.tuner_port)
    try:
        wait_for(lambda: targets_up(prometheus) == {"semipd-engine": "up", "semipd-tuner": "up"}, 30,
                 "both targets up")
        dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "semipd.json").read_text())
        exprs = {(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]}
        missing = exprs
        deadline = time.monotonic() + 60
        seed = 300
        while missing and time.monotonic() < deadline:
            traffic(semipd_server.url, seed)  # rates over 30 s need traffic inside the last 30 s
            seed += 1
            missing = {(title, e) for title, e in missing if not query(prometheus, e)}
        assert not missing, f"Grafana queries with no data: {sorted(missing)}"
    finally:
        tuner.stop()


def test_the_tuner_reading_prometheus_decides_as_reading_the_engine(prometheus, semipd_server, tmp_path):
    url = semipd_server.url
    args = shifting_load_tuner_args(url, tmp_path)
    decisions = {}
    for name, extra in (("engine", []), ("prometheus", ["--prometheus", prometheus.url])):
        tuner = start_tuner(url, tmp_path / f"{name}.db", *args, *extra, port=prometheus.tuner_port)
        try:
            assert get(tuner.url)["metrics_from"] == (prometheus.url if extra else url)
            decisions[name] = [d["new"] for d in shifting_load(url, tuner.url)]
        finally:
            tuner.stop()
            httpx.post(url + "/semipd/split", json={"prefill": 1, "decode": 1})
    assert decisions["prometheus"] == decisions["engine"], decisions

    # At rest, both sources read the same numbers once Prometheus has scraped the engine again.
    time.sleep(3)
    direct, scraped = EngineClient(url).snapshot(), PrometheusSource(prometheus.url, url).snapshot()
    for name in (TTFT, TPOT):
        assert cumulative_buckets(scraped, name) == cumulative_buckets(direct, name)
    for worker in ("prefill", "decode"):
        assert total(scraped, STEP_TIME + "_sum", worker=worker) == pytest.approx(total(direct, STEP_TIME + "_sum", worker=worker))
        assert total(scraped, QUEUE_LENGTH, worker=worker) == total(direct, QUEUE_LENGTH, worker=worker)
