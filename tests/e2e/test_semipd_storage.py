"""Unified storage: one copy of the weights and one KV pool, mapped by both workers."""

import sys
import time

import httpx
import psutil
import pytest

from tests.conftest import EXACT, start_semipd_server
from tests.reference_model import check_equal_to_transformers, generate_ids, greedy_tokens, prompt_ids


def shared_files(pid: int, storage: str) -> set[str]:
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split()[-1] for line in maps if storage in line}


def test_both_workers_map_the_same_weights_and_kv_pool(semipd_server):
    info = httpx.get(semipd_server.url + "/semipd/workers", timeout=30).json()
    prefill = shared_files(info["pids"]["prefill"], info["storage"])
    decode = shared_files(info["pids"]["decode"], info["storage"])
    assert prefill == decode
    names = {path.rsplit("/", 1)[-1] for path in prefill}
    assert any(n.startswith("param.") and "embed_tokens" in n for n in names)
    assert sum(n.startswith("param.") for n in names) >= 10
    pools = {n for n in names if n.startswith("pool.")}
    assert pools, "the KV pool is not in shared storage"


def total_rss_mb(server) -> float:
    return sum(psutil.Process(pid).memory_info().rss for pid in server.pids()) / 2**20


def test_semipd_holds_the_weights_once(tmp_path):
    """Total RSS of every engine process, semi-pd vs unified, on the bench model (< 1.3x)."""
    from engine.default_model import cached_model

    model = cached_model("bench")
    rss = {}
    for mode in ("unified", "semi-pd"):
        server = start_semipd_server(model, tmp_path, "--mode", mode)
        try:
            for seed in range(2):
                r = httpx.post(server.url + "/generate", timeout=300, json={
                    "input_ids": prompt_ids(400, seed, vocab=8000), "sampling_params": {"max_new_tokens": 16}})
                assert r.status_code == 200
            rss[mode] = total_rss_mb(server)
        finally:
            server.stop()
    print(f"total RSS: unified {rss['unified']:.0f} MB, semi-pd {rss['semi-pd']:.0f} MB, "
          f"ratio {rss['semi-pd'] / rss['unified']:.2f}", file=sys.stderr)
    assert rss["semi-pd"] < 1.3 * rss["unified"]


@pytest.fixture(scope="module")
def ipc_server(tiny_model, tmp_path_factory):
    """`--storage ipc`: the GPU design (the owner's tensors opened in place through torch's IPC, the
    worker built without reading weights) on CPU, where the handles are shared-memory names."""
    server = start_semipd_server(tiny_model, tmp_path_factory.mktemp("ipc"), "--mode", "semi-pd", "--split", "1,1",
                                 "--storage", "ipc", "--repartition", "standby", *EXACT)
    yield server
    server.stop()


def torch_segments(pid: int) -> set[str]:
    """The shared-memory segments torch's IPC mapped into a process (file_system sharing)."""
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split()[-1] for line in maps if "/torch_" in line}


def test_with_ipc_storage_the_worker_serves_on_the_owners_weights_and_kv(ipc_server, tiny_model):
    # exact output although the worker loaded dummy weights: it computes with the owner's
    check_equal_to_transformers(ipc_server.url, tiny_model, concurrent=True)
    info = httpx.get(ipc_server.url + "/semipd/workers", timeout=30).json()
    prefill, decode = torch_segments(info["pids"]["prefill"]), torch_segments(info["pids"]["decode"])
    assert len(prefill) >= 10 and prefill <= decode  # every segment the worker maps is the owner's
    # one KV pool: the same prompt again is served from the KV the worker wrote
    prompt = prompt_ids(300, seed=91)
    body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": 4, "temperature": 0}}
    httpx.post(ipc_server.url + "/generate", json=body, timeout=120).raise_for_status()
    again = httpx.post(ipc_server.url + "/generate", json=body, timeout=120).json()
    assert again["meta_info"]["cached_tokens"] >= 0.9 * len(prompt)


def test_with_ipc_storage_a_standby_worker_attaches_to_the_same_manifest(ipc_server, tiny_model):
    """How MPS will move a split on a GPU: a new worker started on its share opens the owner's
    tensors from the manifest written at start, and is swapped in."""
    prompts = [prompt_ids(n, seed=500 + n) for n in (20, 90, 170)]
    first = httpx.get(ipc_server.url + "/semipd/workers", timeout=30).json()
    for swaps, split in enumerate(((2, 1), (1, 1)), start=first["swaps"] + 1):
        r = httpx.post(ipc_server.url + "/semipd/split", json={"prefill": split[0], "decode": split[1]}, timeout=30)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 300
        while (state := httpx.get(ipc_server.url + "/semipd/workers", timeout=30).json())["swaps"] < swaps:
            assert state["standby_error"] is None, state["standby_error"]
            assert time.monotonic() < deadline, f"swap {swaps} did not happen: {state}"
            time.sleep(0.5)
        for prompt in prompts:
            assert generate_ids(ipc_server.url, prompt, 12) == greedy_tokens(tiny_model, prompt, 12)
    assert state["pids"]["prefill"] != first["pids"]["prefill"]
