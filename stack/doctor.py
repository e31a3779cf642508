"""`semipd doctor`: checks a user runs on their own machine to see that semi-PD works there.

Two engines on the embedded tiny model (unified and semi-pd, float32 so that greedy output can be
compared token for token), then: the same greedy output from both; one KV pool (a prompt sent
again reuses the KV its first prefill wrote); the split acting on compute (decode's time per
token at its smallest and largest share); and re-partitions under load with no request failed.
On a GPU the engine is the pdmux one (engine/semipd/pdmux_owner.py), or with `--storage ipc` the
two processes under MPS or green contexts, and `engine/gpu_probe.py` adds torch-only checks first.
Each check is a plain function over HTTP; the engines are real.
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


def settle(url: str, split, timeout_s: float = 600.0) -> None:
    """Set `split` and wait until it is in force (under MPS a new prefill worker starts for it)."""
    set_split(url, split)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = split_state(url)
        if (state["split"]["prefill"], state["split"]["decode"]) == tuple(split) and not state.get("pending"):
            return
        time.sleep(0.5)
    raise TimeoutError(f"split {split[0]},{split[1]} was not in force after {timeout_s:.0f} s")


def valid_splits(state: dict) -> list[tuple[int, int]]:
    """Every split the engine takes: its menu on GPU, every pair of shares on CPU."""
    if state.get("menu"):
        return [tuple(pair) for pair in state["menu"]]
    shares = range(1, state["units"] + 1)
    return list(itertools.product(shares, shares))


def compared_splits(splits: list[tuple[int, int]], units: int) -> tuple[str, tuple] | None:
    """The phase whose time shows the split, and its two splits to compare: decode at its smallest
    and largest share among disjoint splits (overlapping CPU shares oversubscribe cores); under MPS,
    where decode keeps every SM, prefill at its smallest and largest share; None if neither varies."""
    disjoint = sorted((s for s in splits if s[0] + s[1] <= units), key=lambda s: (s[1], -s[0]))
    if disjoint and disjoint[0][1] != disjoint[-1][1]:
        return "decode", (disjoint[0], disjoint[-1])
    partial = sorted((s for s in splits if s[0] < units), key=lambda s: s[0])
    if not disjoint and partial and partial[0][0] != partial[-1][0] and len({s[1] for s in partial}) == 1:
        return "prefill", (partial[0], partial[-1])
    return None


def split_effect(url: str, splits: list[tuple[int, int]], units: int, judged: bool) -> Check:
    """The compared phase's p50 time (decode: per output token, 8 requests decoding and none
    prefilling; prefill: to the first token of 8 long prompts) at its two splits. Judged on a GPU
    (an SM share must show); on CPU reported only: the tiny model's steps are too small for a
    second thread to matter (the tests read the cores back instead)."""
    compared = compared_splits(splits, units)
    if compared is None:
        return Check("the split acts on compute", None,
                     f"one decode share among the disjoint splits of {units} units: nothing to compare")
    phase, ends = compared
    what, metric, length, new_tokens = {"decode": ("decode p50 time per token", "tpot_s", 16, 96),
                                        "prefill": ("prefill p50 time to first token", "ttft_s", 1500, 1)}[phase]
    prompts = [prompt(length, seed=900 + i) for i in range(8)]
    measured = {}
    for split in ends:
        settle(url, split)
        records = asyncio.run(run_concurrently(url, prompts, new_tokens))
        times = sorted(getattr(r, metric) for r in records if getattr(r, metric))
        measured[split] = times[len(times) // 2]
    (small, slow), (large, fast) = measured.items()
    ratio = slow / fast
    return Check("the split acts on compute", ratio > 1.1 if judged else None,
                 f"{what} {slow * 1e3:.1f} ms at split {small[0]},{small[1]} and "
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


def engine_checks(model: Path, device: str, workdir: Path, requests: int, moves: int, say=print,
                  semipd_flags: tuple[str, ...] = (), sglang_flags: tuple[str, ...] = ()) -> list[Check]:
    """`semipd_flags` go to the semi-pd engine (its storage, its GPU partition); `sglang_flags`
    (passed through to SGLang) to both."""
    serve = [sys.executable, "-m", "cli.main", "serve", "--model", str(model), "--device", device,
             "--dtype", "float32"]
    unified_port = free_port(30500)
    semipd_port = free_port(unified_port + 1)
    servers = [ServerProcess([*serve, "--mode", mode, "--port", str(port), *flags, *sglang_flags],
                             f"http://127.0.0.1:{port}", workdir / f"{mode}.log")
               for mode, port, flags in (("unified", unified_port, ()), ("semi-pd", semipd_port, semipd_flags))]
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
