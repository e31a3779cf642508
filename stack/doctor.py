"""`semipd doctor`: checks a user runs on their own machine to see that semi-PD works there.

Two engines on the embedded tiny model (unified and semi-pd, float32 so that greedy output can be
compared token for token), then: the same greedy output from both; one KV pool (a prompt sent
again reuses the KV its first prefill wrote); the split acting on compute (decode's time per
token at its smallest and largest share); and re-partitions under load with no request failed.
On a GPU the engine is the pdmux one (engine/semipd/pdmux_owner.py) and `engine/gpu_probe.py`
adds torch-only checks first. Each check is a plain function over HTTP; the engines are real.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtest.load_generator import run_concurrently
from stack.server_process import ServerProcess
from stack.up import port_in_use


@dataclass
class Check:
    name: str
    ok: bool | None  # None: measured and reported, not judged
    detail: str


def prompt(length: int, seed: int, vocab: int = 2000) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, vocab) for _ in range(length)]


def generate(url: str, ids: list[int], new_tokens: int) -> list[int]:
    r = httpx.post(url + "/generate", timeout=300, json={
        "input_ids": ids, "sampling_params": {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True}})
    r.raise_for_status()
    return r.json()["output_ids"]


def greedy_equal(unified: str, semipd: str, prompts: list[list[int]], new_tokens: int = 24) -> Check:
    differ = [i for i, ids in enumerate(prompts) if generate(unified, ids, new_tokens) != generate(semipd, ids, new_tokens)]
    return Check("greedy output semi-pd = unified", not differ,
                 f"{len(prompts) - len(differ)} of {len(prompts)} prompts token for token" +
                 (f"; prompts {differ} differ" if differ else ""))


def one_pool(url: str) -> Check:
    ids = prompt(300, seed=17)
    generate(url, ids, 4)
    r = httpx.post(url + "/generate", timeout=300, json={
        "input_ids": ids, "sampling_params": {"max_new_tokens": 4, "temperature": 0}}).json()
    cached = r["meta_info"].get("cached_tokens", 0)
    return Check("one KV pool: a prefill's KV is read by decode in place", cached >= 0.9 * len(ids),
                 f"the same {len(ids)}-token prompt again: {cached} tokens from the cache")


def split_state(url: str) -> dict:
    return httpx.get(url + "/semipd/split", timeout=30).json()


def set_split(url: str, split) -> int:
    return httpx.post(url + "/semipd/split", json={"prefill": split[0], "decode": split[1]}, timeout=30,
                      headers={"x-semipd-who": "semipd doctor"}).status_code


def valid_splits(state: dict) -> list[tuple[int, int]]:
    """Every split the engine takes: its menu on GPU, every pair of shares on CPU."""
    if state.get("menu"):
        return [tuple(pair) for pair in state["menu"]]
    shares = range(1, state["units"] + 1)
    return list(itertools.product(shares, shares))


def split_effect(url: str, splits: list[tuple[int, int]], units: int, judged: bool) -> Check:
    """Decode's time per output token at its smallest and at its largest share (no prefill
    meanwhile). Judged on a GPU (an SM share must show); on CPU reported only: the tiny model's
    steps are too small for a second thread to matter (the tests read the cores back instead)."""
    disjoint = [s for s in splits if s[0] + s[1] <= units]  # overlapping CPU shares oversubscribe cores
    by_decode = sorted(disjoint, key=lambda s: (s[1], -s[0]))
    if not by_decode or by_decode[0][1] == by_decode[-1][1]:
        return Check("the split acts on compute", None,
                     f"one decode share among the disjoint splits of {units} units: nothing to compare")
    measured = {}
    for split in (by_decode[0], by_decode[-1]):
        set_split(url, split)
        records = asyncio.run(run_concurrently(url, [prompt(16, seed=900 + i) for i in range(8)], 96))
        tpots = sorted(r.tpot_s for r in records if r.tpot_s)
        measured[split] = tpots[len(tpots) // 2]
    (small, slow), (large, fast) = measured.items()
    ratio = slow / fast
    return Check("the split acts on compute", ratio > 1.1 if judged else None,
                 f"decode p50 time per token {slow * 1e3:.1f} ms at split {small[0]},{small[1]} and "
                 f"{fast * 1e3:.1f} ms at {large[0]},{large[1]} ({ratio:.2f}x)")


def repartitions_under_load(url: str, splits: list[tuple[int, int]], requests: int, moves: int) -> Check:
    rng = random.Random(3)
    prompts = [prompt(rng.randint(5, 300), seed=5000 + i) for i in range(requests)]
    statuses: list[int] = []

    def move():
        for _ in range(moves):
            statuses.append(set_split(url, rng.choice(splits)))
            time.sleep(0.2)

    mover = threading.Thread(target=move)
    mover.start()
    records = asyncio.run(run_concurrently(url, prompts, 32))
    mover.join()
    failed = [r.error for r in records if not r.ok]
    refused = [s for s in statuses if s != 200]
    return Check(f"{moves} re-partitions under load", not failed and not refused and len(statuses) == moves,
                 f"{len(records) - len(failed)} of {len(records)} requests completed, {len(statuses) - len(refused)} "
                 f"of {moves} splits applied" + (f"; first failure: {failed[0]}" if failed else ""))


def free_port(start: int) -> int:
    return next(p for p in range(start, start + 200) if not port_in_use("127.0.0.1", p))


def engine_checks(model: Path, device: str, workdir: Path, requests: int, moves: int, say=print) -> list[Check]:
    serve = [sys.executable, "-m", "cli.main", "serve", "--model", str(model), "--device", device,
             "--dtype", "float32"]
    unified_port = free_port(30500)
    semipd_port = free_port(unified_port + 1)
    servers = [ServerProcess([*serve, "--mode", mode, "--port", str(port)], f"http://127.0.0.1:{port}",
                             workdir / f"{mode}.log")
               for mode, port in (("unified", unified_port), ("semi-pd", semipd_port))]
    try:
        say("starting a unified and a semi-pd engine (logs in %s) ..." % workdir)
        for server in servers:
            server.launch()
        for server in servers:
            server.wait_ready(timeout_s=600)
        unified, semipd = (s.url for s in servers)
        state = split_state(semipd)
        splits = valid_splits(state)
        checks = []
        for run in (lambda: greedy_equal(unified, semipd, [prompt(n, seed=n) for n in (3, 17, 64, 133, 300)]),
                    lambda: one_pool(semipd),
                    lambda: split_effect(semipd, splits, state["units"], judged=device != "cpu"),
                    lambda: repartitions_under_load(semipd, splits, requests, moves)):
            checks.append(run())
            say(report_line(checks[-1]))
        return checks
    finally:
        for server in servers:
            server.stop()


def report_line(check: Check) -> str:
    return f"{ {True: 'ok  ', False: 'FAIL', None: 'info'}[check.ok]} {check.name}: {check.detail}"
