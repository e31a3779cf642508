"""Calibrating the simulator to our engine: measure a running semi-PD engine's step times and fit
the simulator's step-time model to them (`semipd calibrate-model`; `semipd simulate --hardware
FILE.json` then predicts that engine).

For each split `calibrate` sends (1) prompts of several lengths one at a time (prefill steps
alone, and the request overhead: client TTFT minus the prefill step), (2) batches of concurrent
requests (decode steps over batch sizes and context lengths, some prefills reusing cached
prefixes), (3) a short Poisson load (both phases at once, for the slow-down each suffers from the
other). The radix cache is flushed before each split. The engine's own step records (`GET /semipd/steps`) give the
times. Fitted at each measured share: prefill = a + b*tokens + c*pairs + d*cached context, decode
= a + b*context + c*batch (DistServe's forms, least squares on relative error); contention
factors for both phases running on disjoint and on overlapping shares.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import statistics
import time
from pathlib import Path

import httpx
import numpy as np

from contract import SPLIT_ROUTE, STEPS_ROUTE, read_split_state, split_request
from loadtest.load_generator import replay
from loadtest.workload import Request, parse_workload
from simulator.perf_model import Fitted, by_share

PROMPTS = (32, 64, 128, 256, 512, 768, 1024)
BATCHES = (1, 2, 4, 8, 16, 32)


def _get(client, url: str, path: str) -> dict:
    response = client.get(url + path, timeout=30)
    response.raise_for_status()
    return response.json()


def engine_facts(url: str) -> dict:
    with httpx.Client() as client:
        split = _get(client, url, SPLIT_ROUTE)
        info = _get(client, url, "/server_info")
    states = (info.get("internal_states") or [{}])[0]
    pick = lambda key, default: states.get(key) or info.get(key) or default
    in_force, units = read_split_state(split)
    return {"units": units, "split": in_force,
            "kv_capacity": int(pick("max_total_num_tokens", 0)),
            "chunk_size": int(pick("chunked_prefill_size", 0) or 8192),
            "max_batch": int(pick("max_running_requests", 0) or 256),
            "model": info.get("model_path", "?")}


def set_split(url: str, split: tuple[int, int]) -> None:
    response = httpx.post(url + SPLIT_ROUTE, json=split_request(*split, "calibrate-model"), timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"the engine refused split {split}: {response.text}")


def flush_cache(url: str) -> None:
    httpx.post(url + "/flush_cache", timeout=30)


def steps_since(url: str, since: float) -> list[dict]:
    with httpx.Client() as client:
        return _get(client, url, f"{STEPS_ROUTE}?since={since}")["steps"]


def measure_split(url: str, split, repeats: int, load_s: float, vocab: int, chunk: int, say) -> dict:
    """Run the three phases on one split; the step records and the sequential requests' TTFTs."""
    set_split(url, split)
    flush_cache(url)  # every prompt below is new to the engine, whatever ran before
    since = time.time()
    sequential = []
    # at least four sizes up to the chunk, so the per-token cost can be told from the fixed one
    prompts = sorted({p for p in PROMPTS if p <= chunk} | {max(4, chunk // 8), max(4, chunk // 4), chunk // 2, chunk})
    salt = 100_000 * sum(split)
    for i in range(repeats):
        for p in prompts:
            record = asyncio.run(replay(url, [Request(0.0, p, 1)], vocab, seed=salt + 1000 * i + p))[0]
            if not record.ok:
                raise RuntimeError(f"calibration request failed: {record.error}")
            sequential.append(record)
    say(f"split {split[0]},{split[1]}: {len(sequential)} prefill steps alone")
    for batch in BATCHES:
        for context in (64, 384):
            asyncio.run(replay(url, [Request(0.0, context, 24)] * batch, vocab, seed=salt + 50_000 + batch * context))
    say(f"split {split[0]},{split[1]}: decode batches {BATCHES}")
    load = parse_workload(f"poisson:rate=2,prompt=uniform(64,512),output=uniform(16,64),count={max(1, int(2 * load_s))},seed=3")
    asyncio.run(replay(url, load, vocab))
    say(f"split {split[0]},{split[1]}: {len(load)} requests of mixed load")
    return {"split": split, "steps": steps_since(url, since), "ttfts": [r.ttft_s for r in sequential]}


def _overlapped(step: dict, others: list[dict]) -> bool:
    """True if steps of the other worker cover more than half of this step."""
    covered = sum(max(0.0, min(step["end"], o["end"]) - max(step["start"], o["start"])) for o in others)
    return covered > 0.5 * (step["end"] - step["start"])


def features(step: dict) -> tuple[float, float, float]:
    if step["worker"] == "prefill":
        n, b = step["tokens"], max(1, step["batch_size"])
        pairs = n * (step.get("context", 0) / b + n / (2 * b))  # equal shares of the batch
        return 1.0, float(n), pairs / 1e6, step.get("context", 0) / 1e3
    return 1.0, float(step.get("context", 0)), float(step["batch_size"])


def fit_linear(rows: list[tuple[tuple, float]]) -> np.ndarray:
    """Least squares on relative error (rows scaled by 1/t, as DistServe fits); non-negative
    coefficients (a negative one is dropped and the rest refitted)."""
    x = np.array([f for f, _ in rows], dtype=float)
    t = np.array([v for _, v in rows], dtype=float)
    active = list(range(x.shape[1]))
    while True:
        coef = np.zeros(x.shape[1])
        sol, *_ = np.linalg.lstsq(x[:, active] / t[:, None], np.ones(len(t)), rcond=None)
        coef[active] = sol
        if (sol >= 0).all() or len(active) == 1:
            break
        active.pop(int(np.argmin(sol)))
    return np.clip(coef, 0, None)


def fit_profile(measured: list[dict], facts: dict):
    """The Fitted model from the step records of every measured split."""
    units = facts["units"]
    records = []  # (worker, share, other worker's share, overlapped, features, seconds)
    for m in measured:
        steps = m["steps"]
        split = {"prefill": m["split"][0] / units, "decode": m["split"][1] / units}
        for worker, other in (("prefill", "decode"), ("decode", "prefill")):
            others = [s for s in steps if s["worker"] == other]
            for s in steps:
                if s["worker"] == worker and s["end"] > s["start"]:
                    share = len(s["cores"]) / units if s.get("cores") else split[worker]
                    records.append((worker, share, split[other], _overlapped(s, others), features(s),
                                    s["end"] - s["start"]))
    tables, contention, oversubscribed, errors = {}, {}, {}, {}
    for worker in ("prefill", "decode"):
        mine = [r for r in records if r[0] == worker]
        if not mine:
            raise RuntimeError(f"no {worker} steps were recorded")
        table = []
        for share in sorted({r[1] for r in mine}):
            alone = [(r[4], r[5]) for r in mine if r[1] == share and not r[3]]
            if len(alone) >= 5:
                coef = fit_linear(alone)
                scale = (1, 1, 1e-6, 1e-3) if worker == "prefill" else (1, 1, 1)  # undo the features' scaling
                table.append((share, tuple(float(c) * k for c, k in zip(coef, scale))))
        if not table:
            raise RuntimeError(f"too few {worker} steps ran alone to fit ({len(mine)} recorded)")
        unscaled = lambda f: (f[0], f[1], f[2] * 1e6, f[3] * 1e3) if worker == "prefill" else f
        predict = lambda share, f: by_share(table, unscaled(f), share)
        ratios = {False: [], True: []}  # both running, on disjoint or on overlapping shares
        for _, share, other, over, f, t in mine:
            if over:
                ratios[share + other > 1.0 + 1e-9].append(t / predict(share, f))
        contention[worker] = max(0.0, statistics.median(ratios[False]) - 1) if ratios[False] else 0.0
        oversubscribed[worker] = max(0.0, statistics.median(ratios[True]) - 1) if ratios[True] else contention[worker]
        slow = lambda share, other, over: 1 + (oversubscribed if share + other > 1.0 + 1e-9 else contention)[worker] * over
        errors[worker] = float(np.median([abs(predict(share, f) * slow(share, other, over) / t - 1)
                                          for _, share, other, over, f, t in mine]))
        tables[worker] = tuple(table)
    # request overhead: client TTFT minus the prefill step, over the sequential requests
    overheads = []
    for m in measured:
        prefills = sorted((s for s in m["steps"] if s["worker"] == "prefill"), key=lambda s: s["start"])
        for ttft, step in zip(m["ttfts"], prefills):
            overheads.append(ttft - (step["end"] - step["start"]))
    # gaps between decode steps: plain scheduling, or taking in a finished prefill (semi-PD's
    # hand-off: the prefill's results processed and its first token streamed by the decode loop)
    gaps, handoff_gaps = [], []
    for m in measured:
        if sum(m["split"]) > units:
            continue  # overlapping shares: their gaps say more about oversubscription than the loop
        decodes = sorted((s for s in m["steps"] if s["worker"] == "decode"), key=lambda s: s["start"])
        prefill_ends = sorted(s["end"] for s in m["steps"] if s["worker"] == "prefill")
        for a, b in zip(decodes, decodes[1:]):
            gap = b["start"] - a["end"]
            if not 0 <= gap < 0.5:
                continue  # the decoder was idle
            i = bisect.bisect_left(prefill_ends, a["start"])
            (handoff_gaps if i < len(prefill_ends) and prefill_ends[i] <= b["start"] else gaps).append(gap)
    gap = statistics.mean(gaps) if gaps else 0.0  # the mean: rare long gaps count in TPOT
    return Fitted(
        units=units, kv_capacity=facts["kv_capacity"], chunk_size=facts["chunk_size"],
        max_batch=facts["max_batch"], prefill=tables["prefill"], decode=tables["decode"],
        contention=(contention["prefill"], contention["decode"]),
        oversubscribed=(oversubscribed["prefill"], oversubscribed["decode"]),
        request_overhead_s=max(0.0, statistics.median(overheads)) if overheads else 0.0,
        decode_gap_s=gap,
        handoff_s=max(0.0, statistics.median(handoff_gaps) - statistics.median(gaps)) if handoff_gaps and gaps else 0.0,
        source=f"semipd calibrate-model on {facts['model']} ({len(records)} steps, splits "
               f"{', '.join(f'{a},{b}' for a, b in (m['split'] for m in measured))})",
        fit_error={k: round(v, 4) for k, v in errors.items()})


def calibrate(url: str, splits=None, repeats: int = 2, load_s: float = 20.0, vocab: int = 1000,
              say=lambda text: None, keep: str | None = None):
    """Measure the engine at `splits` (restoring its split after) and return the Fitted model;
    with `keep`, write the raw measurements there (`--from-steps` refits from them)."""
    facts = engine_facts(url)
    units = facts["units"]
    splits = splits or [(max(1, units // 2), max(1, units - units // 2)), (units, units)]
    measured = []
    try:
        for split in splits:
            measured.append(measure_split(url, split, repeats, load_s, vocab, facts["chunk_size"], say))
    finally:
        set_split(url, facts["split"])
    if keep:
        Path(keep).write_text(json.dumps({"facts": facts, "measured": measured}))
    return fit_profile(measured, facts)


def refit(steps_path: str | Path):
    """The Fitted model again from the raw measurements `calibrate(keep=...)` wrote, no engine."""
    kept = json.loads(Path(steps_path).read_text())
    return fit_profile(kept["measured"], kept["facts"])
