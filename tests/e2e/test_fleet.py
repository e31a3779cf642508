"""Two semi-pd engines, each on its own cores, behind SGLang's real router (sglang-router): requests
spread over both; a killed engine is reported down, requests sent after it died are served by the
other, and it rejoins when restarted."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from contract.access import bearer
from stack.fleet import Fleet, core_groups, healthy_engines, semipd_engine
from stack.server_process import ServerProcess
from tests.conftest import EXACT, free_port
from tests.live_tuning import wait_for
from tests.reference_model import generate_ids, greedy_tokens, prompt_ids
from tuner.engine_metrics import parse, total

KEY = "fleet-test-key"


@pytest.fixture(scope="module")
def fleet(tiny_model, tmp_path_factory):
    cores = sorted(os.sched_getaffinity(0))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SEMIPD_ADMIN_KEY": KEY}
    ports, groups = [free_port(), free_port()], core_groups(cores, 2)
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), "127.0.0.1", free_port(), ports, groups, env,
                  router_policy="round-robin", metrics_port=free_port(),
                  commands=[semipd_engine(g, "127.0.0.1", p, ["--model", str(tiny_model), *EXACT])
                            for g, p in zip(groups, ports)])
    parts = fleet.launch()
    try:
        fleet.wait_ready(300)
        yield fleet
    finally:
        for _, part in reversed(parts):
            part.stop()
        for engine in fleet.engines:  # restarted ones too
            engine.stop()


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


def test_a_killed_engine_is_reported_down_and_rejoins_when_restarted(fleet, tiny_model):
    down = fleet.engines[1]
    down.stop()
    wait_for(lambda: len(healthy_engines(fleet.router.url, KEY)) == 1, 30, "the router to count one engine down")
    assert healthy_engines(fleet.router.url, KEY) == [fleet.engines[0].url]
    outputs, prompts = through_router(fleet, 8, seed=200)  # sent after it died: all served by the other
    assert outputs[0] == greedy_tokens(tiny_model, prompts[0], 6) and all(len(o) == 6 for o in outputs)

    fleet.engines[1] = ServerProcess(down.command, down.url, down.log_path.with_suffix(".restarted.log"),
                                     down.env).start(timeout_s=300)
    wait_for(lambda: len(healthy_engines(fleet.router.url, KEY)) == 2, 30, "the router to count it back")
    assert sorted(healthy_engines(fleet.router.url, KEY)) == sorted(e.url for e in fleet.engines)
    before = served(fleet.engines[1])
    through_router(fleet, 8, seed=300)
    assert served(fleet.engines[1]) - before >= 2, "the restarted engine got no requests"
