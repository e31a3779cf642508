"""Two semi-pd engines, each on its own cores, behind SGLang's real router (sglang-router): requests
spread over both; an engine killed under load loses only the requests it held, the router and the
dashboard's fleet view report it down, and it rejoins when restarted."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from contract.access import bearer
from stack.fleet import device_groups, healthy_engines
from stack.server_process import ServerProcess
from tests.conftest import REPO, running_fleet, start_tuner
from tests.live_tuning import wait_for
from tests.reference_model import generate_ids, greedy_tokens, prompt_ids
from tuner.engine_metrics import parse, total

KEY = "fleet-test-key"


@pytest.fixture(scope="module")
def fleet(tiny_model, tmp_path_factory):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SEMIPD_ADMIN_KEY": KEY}
    groups = device_groups(sorted(os.sched_getaffinity(0)), 2)
    with running_fleet(tiny_model, tmp_path_factory.mktemp("fleet"), groups, env, router_policy="round-robin") as fleet:
        yield fleet


@pytest.fixture(scope="module")
def fleet_tuners(fleet, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fleet-tuners")
    tuners = [start_tuner(e.url, folder / f"tuner-{i}.db", "--policy", "static", "--off", "--interval", "1",
                          "--ttft-slo", "1", "--tpot-slo", "0.5", env={"SEMIPD_ADMIN_KEY": KEY})
              for i, e in enumerate(fleet.engines)]
    yield tuners
    for tuner in tuners:
        tuner.stop()


def served(engine: ServerProcess) -> float:
    return total(parse(httpx.get(engine.url + "/metrics", timeout=10).text), "sglang:num_requests_total")


def through_router(fleet, count: int, seed: int) -> tuple[list, list]:
    prompts = [prompt_ids(30 + 7 * i, seed=seed + i) for i in range(count)]
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda p: generate_ids(fleet.router.url, p, 6), prompts)), prompts


def test_each_engine_has_its_own_cores_and_requests_spread_over_both(fleet, tiny_model):
    import psutil

    for engine, cores in zip(fleet.engines, fleet.groups):
        assert set(psutil.Process(engine.process.pid).cpu_affinity()) == set(cores)
    before = [served(e) for e in fleet.engines]
    outputs, prompts = through_router(fleet, 12, seed=100)
    for got, prompt in list(zip(outputs, prompts))[::4]:
        assert got == greedy_tokens(tiny_model, prompt, 6)
    spread = [served(e) - b for e, b in zip(fleet.engines, before)]
    assert sum(spread) == 12 and min(spread) >= 4, spread  # round robin: 6 each, give or take


def test_the_routers_control_routes_need_the_admin_key(fleet):
    assert httpx.get(fleet.router.url + "/workers", timeout=10).status_code == 401
    assert httpx.post(fleet.router.url + "/workers", json={"url": "http://127.0.0.1:1"}, timeout=10).status_code == 401
    assert httpx.get(fleet.router.url + "/workers", headers=bearer(KEY), timeout=10).status_code == 200


def fleet_view(fleet, tuners) -> AppTest:
    """The dashboard's page with this fleet's tuners, as its user sees it."""
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=30)
    at.session_state["tuner_urls"] = [t.url for t in tuners]
    at.session_state["router_metrics_url"] = fleet.metrics_url
    return at.run()


def view_rows(at: AppTest) -> dict[str, dict]:
    table = at.dataframe[0].value
    return {row["engine"]: row for row in table.to_dict("records")}


class Clients:
    """Requests through the router from 4 threads, one after another each, until stopped: when each
    started, and whether it got its tokens."""

    def __init__(self, url: str):
        self.url, self.records, self.stopping = url, [], threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(4)]
        for thread in self.threads:
            thread.start()

    def _run(self, seed: int) -> None:
        for i in itertools.count():
            if self.stopping.is_set():
                return
            prompt, started = prompt_ids(40 + (37 * i) % 200, seed=1000 * seed + i), time.time()
            try:
                ok = len(generate_ids(self.url, prompt, 6)) == 6
            except (AssertionError, httpx.HTTPError):
                ok = False
            self.records.append((started, ok))

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=120)


def test_an_engine_killed_under_load_loses_only_what_it_held_is_shown_down_and_rejoins(fleet, fleet_tuners,
                                                                                     tiny_model):
    at = fleet_view(fleet, fleet_tuners)
    rows = view_rows(at)
    assert [rows[e.url]["router"] for e in fleet.engines] == ["healthy", "healthy"], rows
    assert [rows[e.url]["serving"] for e in fleet.engines] == ["yes", "yes"], rows
    down = fleet.engines[1]
    clients = Clients(fleet.router.url)
    try:
        wait_for(lambda: len(clients.records) >= 8, 60, "requests through the router")
        killed_at = time.time()
        os.killpg(os.getpgid(down.process.pid), signal.SIGKILL)  # the engine and every process of it
        wait_for(lambda: len(healthy_engines(fleet.router.url, KEY)) == 1, 30, "the router to count one engine down")
        after = len([r for r in clients.records if r[0] > killed_at])
        wait_for(lambda: len([r for r in clients.records if r[0] > killed_at]) >= after + 8, 60,
                 "requests after the router counted it down")
    finally:
        clients.stop()
    assert healthy_engines(fleet.router.url, KEY) == [fleet.engines[0].url]
    lost = [started for started, ok in clients.records if not ok]
    print(f"{len(clients.records)} requests, {len(lost)} lost, "
          f"{len([r for r in clients.records if r[0] > killed_at])} sent after the kill")
    # only requests the dead engine held can be lost: at most one per client, all sent before the kill
    assert len(lost) <= 4 and all(started <= killed_at for started in lost), (lost, killed_at)

    wait_for(lambda: view_rows(at.run())[down.url]["router"] == "down", 30, "the fleet view to show it down")
    assert "is down" in " ".join(e.value for e in at.error)
    assert view_rows(at)[fleet.engines[0].url]["router"] == "healthy"

    fleet.engines[1] = ServerProcess(down.command, down.url, down.log_path.with_suffix(".restarted.log"),
                                     down.env).start(timeout_s=300)
    wait_for(lambda: len(healthy_engines(fleet.router.url, KEY)) == 2, 30, "the router to count it back")
    assert sorted(healthy_engines(fleet.router.url, KEY)) == sorted(e.url for e in fleet.engines)
    before = served(fleet.engines[1])
    outputs, prompts = through_router(fleet, 8, seed=300)
    assert outputs[0] == greedy_tokens(tiny_model, prompts[0], 6)
    assert served(fleet.engines[1]) - before >= 2, "the restarted engine got no requests"
    wait_for(lambda: view_rows(at.run())[down.url]["router"] == "healthy", 30, "the fleet view to show it back")
