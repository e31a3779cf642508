"""Unified storage: one copy of the weights and one KV pool, mapped by both workers."""

import sys

import httpx
import psutil

from tests.conftest import start_semipd_server
from tests.reference_model import prompt_ids


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
