"""`--repartition standby`: a new split starts a prefill worker on its share and swaps it in at a
batch boundary (what MPS needs on a GPU: a process's SM share is fixed when it starts)."""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from engine.partition.cpu import process_affinity
from tests.conftest import EXACT, run_semipd, start_semipd_server
from tests.reference_model import generate_ids, greedy_tokens, prompt_ids

CORES = sorted(os.sched_getaffinity(0))
SWAPS, REQUESTS, NEW_TOKENS, CLIENTS = 20, 200, 16, 2


@pytest.fixture(scope="module")
def standby_server(tiny_model, tmp_path_factory):
    server = start_semipd_server(tiny_model, tmp_path_factory.mktemp("standby"), "--mode", "semi-pd",
                                 "--split", "1,1", "--repartition", "standby", *EXACT)
    yield server
    server.stop()


def workers(server) -> dict:
    return httpx.get(server.url + "/semipd/workers", timeout=30).json()


def set_split(server, prefill: int, decode: int) -> dict:
    r = httpx.post(server.url + "/semipd/split", json={"prefill": prefill, "decode": decode, "who": "test"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for_swap(server, swaps: int, timeout_s: float = 300) -> dict:
    """A new worker loads on the cores that serve meanwhile (15-25 s on 2 cores, longer when other
    servers of the suite are alive)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = workers(server)
        if state["swaps"] >= swaps:
            return state
        assert state["standby_error"] is None, state["standby_error"]
        time.sleep(0.2)
    raise AssertionError(f"swap {swaps} did not happen within {timeout_s:.0f} s: {workers(server)}")


def test_twenty_standby_swaps_under_200_requests_lose_nothing_and_stay_exact(standby_server, tiny_model):
    rng = random.Random(7)
    prompts = [prompt_ids(rng.randint(5, 200), seed=7000 + i) for i in range(25)]
    expected = [greedy_tokens(tiny_model, p, NEW_TOKENS) for p in prompts]
    first = workers(standby_server)
    assert first["repartition"] == "standby" and first["swaps"] == 0
    done, sent, results, lock = threading.Event(), [0], [], threading.Lock()

    def client():
        # keeps sending until the swaps are done and at least REQUESTS requests have gone out
        while True:
            with lock:
                if done.is_set() and sent[0] >= REQUESTS:
                    return
                i = sent[0]
                sent[0] += 1
            try:
                got = generate_ids(standby_server.url, prompts[i % len(prompts)], NEW_TOKENS)
            except Exception as exc:  # a failed request is a result too
                got = exc
            results.append((i % len(prompts), got))
            time.sleep(0.05)  # steady load, leaving the loading worker some CPU

    pids, histories = {first["pids"]["prefill"]}, []
    with ThreadPoolExecutor(CLIENTS) as pool:
        clients = [pool.submit(client) for _ in range(CLIENTS)]
        try:
            for swap in range(1, SWAPS + 1):
                prefill = 2 if swap % 2 else 1  # the prefill share alternates: one core, then both
                reply = set_split(standby_server, prefill, 1)
                assert reply["applied"] is None and reply["pending"] == f"{prefill},1"  # not yet: a worker starts
                assert reply["split"] == {"prefill": 3 - prefill, "decode": 1}  # the old one serves meanwhile
                state = wait_for_swap(standby_server, swap)
                pids.add(state["pids"]["prefill"])
                split = httpx.get(standby_server.url + "/semipd/split", timeout=30).json()
                assert split["split"] == {"prefill": prefill, "decode": 1} and split["pending"] is None
                # the new worker was started on its share: its cores read back from the OS
                assert process_affinity(state["pids"]["prefill"]) == set(CORES[:prefill])
                histories.append(split["history"][-1])
        finally:
            done.set()
            for c in clients:
                c.result()
    failed = [got for _, got in results if isinstance(got, Exception)]
    assert not failed, failed[:3]
    assert len(results) >= REQUESTS
    assert all(got == expected[i] for i, got in results)
    assert len(pids) == SWAPS + 1  # every swap brought a new worker process
    assert all("standby worker swapped in" in h["who"] for h in histories)
    # a split on the active worker's share applies at once, with no new worker
    reply = set_split(standby_server, 1, 2)  # (after an even number of swaps, the worker is on one core)
    assert reply["applied"] is not None and workers(standby_server)["swaps"] == SWAPS


def test_standby_refuses_lent_cores_at_start():
    done = run_semipd("serve", "--mode", "semi-pd", "--repartition", "standby", "--lend-idle-cores", "--dry-run")
    assert done.returncode == 2
    assert "--repartition standby" in done.stderr and "--lend-idle-cores" in done.stderr
