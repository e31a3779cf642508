"""semi-PD mode on a real loopback server: exact output, partitions, shared storage, live splits."""

import asyncio
import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from engine.partition.cpu import process_affinity
from loadtest.load_generator import run_concurrently
from tests.conftest import EXACT, post_declaring, start_semipd_server, start_tuner
from tests.live_tuning import wait_for
from tests.reference_model import check_equal_to_transformers, generate_ids, greedy_tokens, prompt_ids

CORES = sorted(__import__("os").sched_getaffinity(0))


def set_split(server, prefill, decode, **kw):
    return httpx.post(server.url + "/semipd/split", json={"prefill": prefill, "decode": decode},
                      timeout=30, **kw)


def get_split(server, **kw):
    r = httpx.get(server.url + "/semipd/split", timeout=30, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def workers(server):
    return httpx.get(server.url + "/semipd/workers", timeout=30).json()


def generate_while_moving(server, prompts, new_tokens: int, splits, pause_s: float) -> list:
    """Greedy outputs of `prompts`, sent concurrently while another thread cycles through
    `splits` every `pause_s` until they are all done."""
    done = threading.Event()

    def move():
        i = 0
        while not done.is_set():
            assert set_split(server, *splits[i % len(splits)]).status_code == 200
            i += 1
            time.sleep(pause_s)

    with ThreadPoolExecutor(len(prompts) + 1) as pool:
        mover = pool.submit(move)
        outputs = list(pool.map(lambda p: generate_ids(server.url, p, new_tokens), prompts))
        done.set()
        mover.result()
    return outputs


@pytest.fixture
def restore_split(semipd_server):
    yield
    assert set_split(semipd_server, 1, 1).status_code == 200


def test_semipd_greedy_equals_transformers(semipd_server, tiny_model):
    check_equal_to_transformers(semipd_server.url, tiny_model, concurrent=False)
    check_equal_to_transformers(semipd_server.url, tiny_model, concurrent=True)


def test_greedy_output_survives_repartitions_mid_generation(semipd_server, tiny_model, restore_split):
    before = len(get_split(semipd_server)["history"])
    prompts = [prompt_ids(n, seed=1000 + n) for n in (5, 70, 150, 400)]
    new_tokens = 240
    outputs = generate_while_moving(semipd_server, prompts, new_tokens, [(2, 1), (1, 2), (2, 2), (1, 1)], 0.01)
    assert len(get_split(semipd_server)["history"]) - before >= 4  # the split did move meanwhile
    for prompt, got in zip(prompts, outputs):
        assert got == greedy_tokens(tiny_model, prompt, new_tokens)


@pytest.mark.skipif(len(CORES) < 2, reason="disjoint partitions need two cores")
def test_workers_have_disjoint_cpu_partitions_read_back_from_the_os(semipd_server, restore_split):
    pids = workers(semipd_server)["pids"]
    assert set(pids) == {"prefill", "decode"} and pids["prefill"] != pids["decode"]
    assert set_split(semipd_server, 1, 1).status_code == 200
    prefill, decode = process_affinity(pids["prefill"]), process_affinity(pids["decode"])
    assert prefill and decode and not prefill & decode
    assert set_split(semipd_server, len(CORES), len(CORES)).status_code == 200
    assert process_affinity(pids["prefill"]) == process_affinity(pids["decode"]) == set(CORES)


def test_workers_run_concurrently(semipd_server):
    since = time.time()
    long_prompts = [prompt_ids(1500, seed=s) for s in range(3)]
    decoders = [prompt_ids(20, seed=100 + s) for s in range(6)]

    async def load():
        decoding = asyncio.ensure_future(run_concurrently(semipd_server.url, decoders, 200))
        await asyncio.sleep(0.3)  # let them start decoding, then send long prefills
        prefills = await run_concurrently(semipd_server.url, long_prompts, 2)
        return await decoding + prefills

    records = asyncio.run(load())
    assert all(r.ok for r in records), [r.error for r in records if not r.ok]
    steps = httpx.get(semipd_server.url + "/semipd/steps", params={"since": since}, timeout=30).json()["steps"]
    prefills = [s for s in steps if s["worker"] == "prefill"]
    decodes = [s for s in steps if s["worker"] == "decode"]
    overlapping = [(p, d) for p in prefills for d in decodes if p["start"] < d["end"] and d["start"] < p["end"]]
    assert prefills and decodes
    assert overlapping, "no prefill step ran at the same time as a decode step"


def test_radix_cache_is_shared_by_both_workers(semipd_server):
    prompt = prompt_ids(600, seed=77)
    url = semipd_server.url + "/generate"
    body = lambda ids, n: {"input_ids": ids, "sampling_params": {"max_new_tokens": n, "temperature": 0,
                                                                 "ignore_eos": True}}
    first = httpx.post(url, json=body(prompt, 40), timeout=120).json()
    # The same prompt again: its KV was written by the prefill worker.
    second = httpx.post(url, json=body(prompt, 4), timeout=120).json()
    assert second["meta_info"]["cached_tokens"] >= 0.9 * len(prompt)
    # The prompt followed by the first answer: that part of the KV was written by the decode worker.
    extended = prompt + first["output_ids"]
    third = httpx.post(url, json=body(extended, 4), timeout=120).json()
    assert third["meta_info"]["cached_tokens"] >= len(prompt) + 30


@pytest.mark.parametrize("body", [
    {"prefill": len(CORES) + 1, "decode": 1}, {"prefill": 0, "decode": 1}, {"prefill": 1, "decode": -1},
    {"prefill": "a", "decode": 1}, {"prefill": 1.5, "decode": 1}, {"decode": 1}, [1, 1],
])
def test_invalid_split_gets_400_naming_the_valid_range_and_changes_nothing(semipd_server, body):
    before = get_split(semipd_server)
    r = httpx.post(semipd_server.url + "/semipd/split", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert f"from 1 to {len(CORES)}" in r.text or "JSON object" in r.text
    after = get_split(semipd_server)
    assert after["split"] == before["split"] and len(after["history"]) == len(before["history"])


def test_requests_beyond_the_limits_are_refused_naming_them_and_the_engine_serves_on(semipd_server, tiny_model):
    """The limits test_http_api checks on a unified server, here in semi-pd mode."""
    cases = [({"input_ids": [1_000_000_000, 5]}, "outside the vocabulary: valid ids are 0 to"),
             ({"input_ids": [10 + i % 2000 for i in range(2100)], "sampling_params": {"max_new_tokens": 4}},
              "longer than the model's context length"),
             ({"text": "hi", "sampling_params": {"max_new_tokens": 10**9}}, "context length")]
    for body, message in cases:
        r = httpx.post(semipd_server.url + "/generate", json=body, timeout=30)
        assert r.status_code == 400 and message in r.text, r.text
    status, body = post_declaring(semipd_server.url, "/generate", 65 * 2**20)
    assert status == 413 and "larger than this server's limit" in body, body
    ids = prompt_ids(20, seed=31)
    assert generate_ids(semipd_server.url, ids, 8) == greedy_tokens(tiny_model, ids, 8)


def test_split_history_says_who_when_and_how_long(semipd_server, restore_split):
    assert set_split(semipd_server, 2, 1, headers={"x-semipd-who": "test-operator"}).status_code == 200
    state = get_split(semipd_server)
    assert state["split"] == {"prefill": 2, "decode": 1}
    last = state["history"][-1]
    assert last["new"] == "2,1" and last["who"] == "test-operator" and last["old"] is not None
    assert 0 <= last["switch_ms"] < 1000 and last["time"] > time.time() - 60


def test_metrics_keep_sglang_names_and_add_the_split(semipd_server, restore_split):
    generate_ids(semipd_server.url, prompt_ids(30, 1), 4)
    set_split(semipd_server, 2, 1)
    text = httpx.get(semipd_server.url + "/metrics", timeout=30).text
    for name in ["sglang:time_to_first_token_seconds_count", 'semipd:split_share{', "semipd:step_time_seconds_count",
                 "semipd:batch_size{", "semipd:queue_length{", "semipd:repartitions_total",
                 "semipd:switch_latency_seconds_count"]:
        assert name in text, name
    shares = {line.split('worker="')[1].split('"')[0]: float(line.split()[-1])
              for line in text.splitlines() if line.startswith("semipd:split_share{")}
    assert shares == {"prefill": 2.0, "decode": 1.0}


def test_twenty_repartitions_during_200_requests_lose_nothing(semipd_server, restore_split):
    rng = random.Random(5)
    prompts = [prompt_ids(rng.randint(5, 300), seed=2000 + i) for i in range(200)]
    new_tokens = 32
    applied = []

    async def load():
        async def repartition():
            async with httpx.AsyncClient(timeout=30) as client:
                for _ in range(20):
                    await asyncio.sleep(0.15)
                    split = {"prefill": rng.randint(1, len(CORES)), "decode": rng.randint(1, len(CORES))}
                    r = await client.post(semipd_server.url + "/semipd/split", json=split)
                    applied.append(r.status_code)

        results, _ = await asyncio.gather(run_concurrently(semipd_server.url, prompts, new_tokens), repartition())
        return results

    records = asyncio.run(load())
    assert applied == [200] * 20
    failed = [r.error for r in records if not r.ok]
    assert not failed, failed[:3]
    assert all(r.output_len == new_tokens for r in records)


WATCHDOG_S = 15


@pytest.fixture(scope="module")
def small_kv_server(tiny_model, tmp_path_factory):
    """Few KV slots (forcing retraction), an admin key, idle cores lent between workers, and
    SGLang's scheduler watchdog at 15 s instead of 300."""
    server = start_semipd_server(tiny_model, tmp_path_factory.mktemp("small-kv"), "--mode", "semi-pd",
                                 "--lend-idle-cores", "--watchdog-timeout", str(WATCHDOG_S),
                                 *EXACT, "--max-total-tokens", "700", "--admin-api-key", "secret",
                                 "--schedule-conservativeness", "0.05")  # admit optimistically
    yield server
    server.stop()


def test_decode_out_of_kv_retracts_and_loses_nothing(small_kv_server, tiny_model):
    # SGLang admits a request only if the free slots hold all of it (60 + 390), counting those
    # running at their estimate: a second one is admitted while the first has decoded fewer than
    # about 180 tokens, and two of them outgrow the 700 slots (2 x 450) unless the second came
    # after the first's 200th. A window of 180 decode steps: the prefills' pace hardly matters.
    prompts = [prompt_ids(60, seed=300 + i) for i in range(6)]
    new_tokens = 390

    def run(ids):
        # Without ignore_eos, SGLang admits requests on an estimate of their output length (made
        # optimistic by the server's low conservativeness), so decoding outgrows the pool.
        r = httpx.post(small_kv_server.url + "/generate", timeout=300, json={
            "input_ids": ids, "sampling_params": {"max_new_tokens": new_tokens, "temperature": 0}})
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(len(prompts)) as pool:
        outputs = list(pool.map(run, prompts))
    assert sum(o["meta_info"]["num_retractions"] for o in outputs) > 0, "the pool never ran out"
    for prompt, out in zip(prompts, outputs):
        reference = greedy_tokens(tiny_model, prompt, new_tokens)
        stopped_at_eos = out["meta_info"]["finish_reason"]["type"] == "stop"
        assert len(out["output_ids"]) == new_tokens or stopped_at_eos
        assert out["output_ids"] == reference[: len(out["output_ids"])]


def test_control_routes_of_engine_and_tuner_need_their_keys(small_kv_server, tmp_path):
    """The engine's admin key guards its split and SGLang's admin routes; a tuner started with both
    keys in its environment guards its own control routes with its key and moves the engine's
    split with the admin key. Reads and serving stay open."""
    url, admin = small_kv_server.url, {"Authorization": "Bearer secret"}
    wrong = {"Authorization": "Bearer secreT"}
    engine_controls = [("POST", "/semipd/split", {"prefill": 1, "decode": 1}), ("GET", "/semipd/split", None),
                       ("GET", "/semipd/steps", None), ("GET", "/semipd/workers", None),
                       ("POST", "/flush_cache", None)]
    for method, route, body in engine_controls:
        for headers in ({}, wrong):
            refused = httpx.request(method, url + route, json=body, headers=headers, timeout=30)
            assert refused.status_code in (401, 403), (route, headers, refused.status_code)
        assert httpx.request(method, url + route, json=body, headers=admin, timeout=30).status_code == 200, route
    for route in ("/health", "/metrics"):
        assert httpx.get(url + route, timeout=30).status_code == 200, route

    tuner = start_tuner(url, tmp_path / "t.db", "--policy", "static", "--ttft-slo", "1", "--tpot-slo", "1", "--off",
                        env={"SEMIPD_ADMIN_KEY": "secret", "SEMIPD_TUNER_KEY": "tuner-key"})
    try:
        mine, not_mine = {"Authorization": "Bearer tuner-key"}, [{}, wrong, admin]
        tuner_controls = [("/settings", {"ttft_slo_s": 2.0}), ("/split", {"prefill": 2, "decode": 1}), ("/auth", {})]
        for route, body in tuner_controls:
            for headers in not_mine:
                refused = httpx.post(tuner.url + route, json=body, headers=headers, timeout=30)
                assert refused.status_code == 401 and "tuner's key" in refused.json()["error"], (route, headers)
        state = httpx.get(tuner.url + "/state", timeout=30).json()  # reads are open
        assert state["settings"]["ttft_slo_s"] == 1.0 and state["decisions"] == []  # nothing changed
        assert httpx.get(tuner.url + "/health", timeout=30).json()["key_required"] is True
        for route, body in tuner_controls:
            assert httpx.post(tuner.url + route, json=body, headers=mine, timeout=30).status_code == 200, route
        # the tuner's split reached the engine with the admin key
        assert httpx.get(url + "/semipd/split", headers=admin, timeout=30).json()["split"] == {"prefill": 2, "decode": 1}
    finally:
        tuner.stop()
        httpx.post(url + "/semipd/split", json={"prefill": 1, "decode": 1}, headers=admin, timeout=30)


@pytest.mark.skipif(len(CORES) < 2, reason="lending needs two cores")
def test_lent_cores_are_used_when_the_other_worker_idles_and_never_shared(small_kv_server, tiny_model):
    key = {"Authorization": "Bearer secret"}
    since = time.time()
    # A lone prompt: nothing decodes while it is prefilled, so it gets every core.
    lone = prompt_ids(400, seed=900)
    assert generate_ids(small_kv_server.url, lone, 8) == greedy_tokens(tiny_model, lone, 8)
    # Then prefills arriving while others decode.
    prompts = [prompt_ids(n, seed=910 + n) for n in (20, 30, 200, 300)]
    with ThreadPoolExecutor(len(prompts)) as pool:
        outputs = list(pool.map(lambda p: generate_ids(small_kv_server.url, p, 40), prompts))
    for prompt, got in zip(prompts, outputs):
        assert got == greedy_tokens(tiny_model, prompt, 40)
    steps = httpx.get(small_kv_server.url + "/semipd/steps", params={"since": since}, headers=key,
                      timeout=30).json()["steps"]
    prefills = [s for s in steps if s["worker"] == "prefill"]
    decodes = [s for s in steps if s["worker"] == "decode"]
    assert sorted(prefills[0]["cores"]) == CORES  # the lone prompt's first chunk
    for p in prefills:
        for d in decodes:
            if p["start"] < d["end"] and d["start"] < p["end"]:
                assert not set(p["cores"]) & set(d["cores"]), (p, d)



def test_an_idle_server_outlives_the_scheduler_watchdog(small_kv_server, tiny_model):
    """SGLang's watchdog kills a scheduler whose current batch makes no progress: after traffic,
    an idle semi-pd engine must not look like one (it did, and died 300 s after its last request)."""
    ids = prompt_ids(40, seed=950)
    assert generate_ids(small_kv_server.url, ids, 16) == greedy_tokens(tiny_model, ids, 16)
    time.sleep(WATCHDOG_S + 10)
    assert small_kv_server.process.poll() is None, small_kv_server.log_tail()
    assert httpx.get(small_kv_server.url + "/health", timeout=10).status_code == 200
    assert generate_ids(small_kv_server.url, ids, 16) == greedy_tokens(tiny_model, ids, 16)


def test_unified_mode_is_sglangs_own_loop_with_the_same_output(semipd_server, tiny_model, restore_split):
    n = len(CORES)
    assert set_split(semipd_server, n, n).status_code == 200
    state = get_split(semipd_server)
    assert state["unified"] and state["history"][-1]["unified"]
    since, sent = time.time(), workers(semipd_server)["link"]["batches"]
    check_equal_to_transformers(semipd_server.url, tiny_model, concurrent=True)
    steps = httpx.get(semipd_server.url + "/semipd/steps", params={"since": since}, timeout=30).json()
    prefills = [s for s in steps["steps"] if s["worker"] == "prefill"]
    assert prefills and all(sorted(s["cores"]) == CORES for s in prefills)  # run by the owner, on all cores
    assert workers(semipd_server)["link"]["batches"] == sent  # the worker stood by
    phases = steps["loop"]["phases"]
    assert "prefill forward (local)" in phases and "decode forward" in phases and "prefill hand-off" not in phases


def test_a_step_sends_metadata_only_through_the_socket(semipd_server, restore_split):
    before = workers(semipd_server)["link"]
    # long prompts: pickled tensors would grow with the tokens (input ids, positions, KV slots)
    for length in (100, 1500):
        generate_ids(semipd_server.url, prompt_ids(length, seed=4000 + length), 2)
    after = workers(semipd_server)["link"]
    batches = after["batches"] - before["batches"]
    assert batches >= 2
    assert after["inline_tensors"] == before["inline_tensors"], "a tensor crossed the socket pickled"
    per_batch = (after["bytes_sent"] - before["bytes_sent"] + after["bytes_received"] - before["bytes_received"]) / batches
    assert per_batch < 16_384, f"{per_batch:.0f} bytes per prefill batch on the socket"


@contextmanager
def worker_stopped(server):
    """The prefill worker stopped (SIGSTOP) for the block: the owner goes on forming batches and
    sending them (it may hold two), and none of them completes until the block ends. This makes
    the pipeline's states certain, where the front end's pace decides them otherwise."""
    pid = workers(server)["pids"]["prefill"]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_the_next_prefill_is_formed_while_the_worker_runs_one(semipd_server, tiny_model):
    before = workers(semipd_server)["link"]["pipelined"]
    new_tokens = 16
    # One chunk (64 tokens) each, so that every batch is one whole prompt: a prompt left half
    # prefilled waits for its chunk to complete before the next batch is formed.
    prompts = [prompt_ids(64, seed=6000 + i) for i in range(4)]
    with ThreadPoolExecutor(len(prompts)) as pool:
        with worker_stopped(semipd_server):
            answers = [pool.submit(generate_ids, semipd_server.url, p, new_tokens) for p in prompts]
            wait_for(lambda: workers(semipd_server)["link"]["pipelined"] > before, 60,
                       "batch handed over while another was held")
        for prompt, answer in zip(prompts, answers):
            assert answer.result() == greedy_tokens(tiny_model, prompt, new_tokens)


def test_switching_to_unified_with_two_batches_handed_over_loses_nothing(semipd_server, tiny_model, restore_split):
    """The switch to unified completes the worker's batches first: here it lands while the
    worker holds two, and every output is exact."""
    n, new_tokens = len(CORES), 24
    since, before = time.time(), workers(semipd_server)["link"]["pipelined"]
    prompts = [prompt_ids(64, seed=7000 + i) for i in range(6)]
    with ThreadPoolExecutor(len(prompts) + 1) as pool:
        with worker_stopped(semipd_server):
            answers = [pool.submit(generate_ids, semipd_server.url, p, new_tokens) for p in prompts]
            wait_for(lambda: workers(semipd_server)["link"]["pipelined"] > before, 60, "second batch held")
            switch = pool.submit(set_split, semipd_server, n, n)  # waits for the worker's two batches
            time.sleep(0.5)
        assert switch.result().status_code == 200
        for prompt, answer in zip(prompts, answers):
            assert answer.result() == greedy_tokens(tiny_model, prompt, new_tokens)
    switches = [h for h in get_split(semipd_server)["history"] if h["time"] >= since]
    assert [h["handed_over"] for h in switches] == [2], switches


def test_the_loop_breakdown_names_where_the_owner_spends_its_time(semipd_server):
    since = time.time()
    asyncio.run(run_concurrently(semipd_server.url, [prompt_ids(200, seed=s) for s in range(4)], 16))
    loop = httpx.get(semipd_server.url + "/semipd/steps", params={"since": since}, timeout=30).json()["loop"]
    phases = loop["phases"]
    assert loop["iterations"] > 0 and {"decode forward", "prefill hand-off", "prefill completion",
                                       "formation", "intake"} <= set(phases)
    assert sum(p["share"] for p in phases.values()) == pytest.approx(1.0, abs=1e-6)
