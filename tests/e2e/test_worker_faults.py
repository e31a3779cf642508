"""Semi-PD adds a failure domain stock SGLang does not have: the prefill worker. Killed (SIGKILL)
or hung (SIGSTOP) under a load of 100 requests, it loses no request, the engine serves new ones
within seconds and gets its split back with a new worker; the owner's death ends the engine with
nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from tests.conftest import EXACT, start_semipd_server, start_tuner
from tests.e2e.test_semipd_engine import get_split, workers
from tests.live_tuning import wait_for
from tests.reference_model import generate_ids, greedy_tokens, prompt_ids

HUNG_AFTER_S = 3.0  # the server's --prefill-timeout
CLIENT_TIMEOUT_S = 120.0
REQUESTS, AT_ONCE, NEW_TOKENS = 100, 16, 12


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    server = start_semipd_server(tiny_model, tmp_path_factory.mktemp("faults"), "--mode", "semi-pd", "--split", "1,1",
                                 "--prefill-timeout", str(HUNG_AFTER_S), *EXACT)
    yield server
    server.stop()


def deaths(server, since: float) -> list[dict]:
    return [h for h in get_split(server)["history"] if h.get("event") == "prefill worker died" and h["time"] >= since]


def wait_for_new_worker(server, old_pid: int, timeout_s: float = 240) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline and (workers(server)["restarting"] or workers(server)["pids"]["prefill"] == old_pid):
        time.sleep(0.5)
    state = workers(server)
    assert not state["restarting"] and state["pids"]["prefill"] != old_pid, state
    return state


def gone(pid: int) -> bool:
    """Not running: no such process, or a zombie (reaped by whoever adopted it, or by nobody in
    a container whose first process reaps none)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def deaths_counted(server, cause: str) -> float:
    metrics = httpx.get(server.url + "/metrics", timeout=30).text
    found = re.search(r'^semipd:prefill_worker_deaths_total\{[^}]*cause="%s"[^}]*\} (\S+)' % cause, metrics, re.M)
    return float(found.group(1)) if found else 0.0


def load_through_a_fault(server, tiny_model, fault: int) -> dict:
    """REQUESTS requests, AT_ONCE at a time; once the worker has taken 5 batches of them, `fault`
    is sent to it (0: none, for comparison), and a new request right after. Every request must
    end within the client's timeout, exact; returns the new request's latency and the worker's pid."""
    prompts = [prompt_ids(40 + 37 * (i % 20), seed=7000 + i) for i in range(REQUESTS)]
    pid, batches = workers(server)["pids"]["prefill"], workers(server)["link"]["batches"]
    hit = threading.Event()

    def send(ids):
        r = httpx.post(server.url + "/generate", timeout=CLIENT_TIMEOUT_S, json={
            "input_ids": ids, "sampling_params": {"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}})
        return r.status_code, r.json()

    def strike():
        deadline = time.time() + 60
        while time.time() < deadline and workers(server)["link"]["batches"] < batches + 5:
            time.sleep(0.01)
        os.kill(pid, fault)
        hit.set()
        time.sleep(0.1)
        ids = prompt_ids(200, seed=6999)
        started = time.monotonic()
        got = generate_ids(server.url, ids, 8)
        took = time.monotonic() - started
        assert got == greedy_tokens(tiny_model, ids, 8)
        return took

    with ThreadPoolExecutor(AT_ONCE + 1) as pool:
        probe = pool.submit(strike)
        with ThreadPoolExecutor(AT_ONCE) as senders:
            answers = list(senders.map(send, prompts))
        probe_s = probe.result()
    assert hit.is_set()
    failed = [(status, body) for status, body in answers if status != 200]
    assert not failed, f"{len(failed)} requests failed, e.g. {failed[0]}"
    for i in range(0, REQUESTS, 10):  # a sample, checked token for token
        assert answers[i][1]["output_ids"] == greedy_tokens(tiny_model, prompts[i], NEW_TOKENS), f"request {i}"
    assert all(len(body["output_ids"]) == NEW_TOKENS for _, body in answers)
    return {"probe_s": probe_s, "pid": pid}


def test_a_worker_killed_under_100_requests_loses_none_and_comes_back_on_its_split(server, tiny_model, tmp_path):
    tuner = start_tuner(server.url, tmp_path / "t.db", "--policy", "static", "--ttft-slo", "1", "--tpot-slo", "1",
                        "--interval", "0.5", "--off")
    try:
        calm = load_through_a_fault(server, tiny_model, 0)  # the same load, no fault (and a warm-up)
        since, before = time.time(), deaths_counted(server, "exited")
        done = load_through_a_fault(server, tiny_model, signal.SIGKILL)
        print(f"a request sent 0.1 s after the kill took {done['probe_s']:.2f} s "
              f"({calm['probe_s']:.2f} s under the same load without it)")
        assert done["probe_s"] < 5.0
        died = deaths(server, since)
        assert len(died) == 1 and "exited" in died[0]["who"], died
        wait_for_new_worker(server, done["pid"])
        assert get_split(server)["split"] == {"prefill": 1, "decode": 1}  # the split in force before
        assert deaths_counted(server, "exited") == before + 1
        # the tuner reads the engine's history each tick: the death and the replacement may come a tick apart
        wait_for(lambda: {"prefill worker died", "prefill worker replaced"}
                 <= {e["kind"] for e in httpx.get(tuner.url + "/state").json()["events"]}, 10, "the tuner's events")
    finally:
        tuner.stop()


def test_a_hung_worker_is_treated_as_dead_after_the_timeout(server, tiny_model):
    since, before = time.time(), deaths_counted(server, "hung")
    done = load_through_a_fault(server, tiny_model, signal.SIGSTOP)
    print(f"a request sent 0.1 s after the worker stopped took {done['probe_s']:.2f} s "
          f"(the timeout is {HUNG_AFTER_S} s)")
    assert done["probe_s"] < HUNG_AFTER_S + 5.0
    died = deaths(server, since)
    assert len(died) == 1 and "hung" in died[0]["who"] and "killed" in died[0]["who"], died
    assert gone(done["pid"])
    wait_for_new_worker(server, done["pid"])
    assert get_split(server)["split"] == {"prefill": 1, "decode": 1}
    assert deaths_counted(server, "hung") == before + 1


def test_a_worker_killed_while_idle_is_noticed_at_once(server, tiny_model):
    since = time.time()
    old = workers(server)["pids"]["prefill"]
    os.kill(old, signal.SIGKILL)
    deadline = time.time() + 1.0  # noticed within a second, with no request to reveal it
    while time.time() < deadline and not deaths(server, since):
        time.sleep(0.05)
    died = deaths(server, since)
    assert len(died) == 1 and "while idle" in died[0]["who"], died
    ids = prompt_ids(300, seed=5998)
    assert generate_ids(server.url, ids, 8) == greedy_tokens(tiny_model, ids, 8)  # served meanwhile
    wait_for_new_worker(server, old)
    assert get_split(server)["split"] == {"prefill": 1, "decode": 1}


def test_the_owners_death_ends_the_engine_and_leaves_nothing(tiny_model, tmp_path):
    engine = start_semipd_server(tiny_model, tmp_path, "--mode", "semi-pd", "--split", "1,1")
    try:
        state = workers(engine)
        owner, worker, storage = state["pids"]["decode"], state["pids"]["prefill"], state["storage"]
        assert os.path.isdir(storage)
        os.kill(owner, signal.SIGKILL)
        code = engine.process.wait(timeout=60)  # SGLang's launcher sees its scheduler die and exits
        assert code != 0
        deadline = time.time() + 10
        while time.time() < deadline and not (gone(worker) and not os.path.exists(storage)):
            time.sleep(0.2)
        assert gone(worker), "the prefill worker outlived its owner"
        assert not os.path.exists(storage), f"{storage} was left behind"
    finally:
        engine.stop()
