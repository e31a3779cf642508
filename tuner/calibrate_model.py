"""`semipd calibrate-model`: measure a running semi-PD engine's step times and fit the simulator's
step-time model to them, so that `semipd simulate --hardware FILE.json` predicts that engine.

For each split it sends (1) prompts of several lengths one at a time (prefill steps alone, and the
request overhead: client TTFT minus the prefill step), (2) batches of concurrent requests (decode
steps over batch sizes and context lengths, some prefills reusing cached prefixes), (3) a short
Poisson load (both phases at once, for the slow-down each suffers from the other). The radix
cache is flushed before each split. The engine's own step records (`GET /semipd/steps`) give the
times. Fitted at each measured share: prefill = a + b*tokens + c*pairs + d*cached context, decode
= a + b*context + c*batch (DistServe's forms, least squares on relative error); contention
factors for both phases running on disjoint and on overlapping shares.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HELP = "measure a running semi-pd engine and fit the simulator's step-time model to it"
PROMPTS = (32, 64, 128, 256, 512, 768, 1024)
BATCHES = (1, 2, 4, 8, 16, 32)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0].split(": ", 1)[1]
    parser.add_argument("--url", help="a `semipd serve --mode semi-pd` server")
    parser.add_argument("--from-steps", metavar="FILE",
                        help="refit from the raw measurements an earlier run kept (OUT.steps.json), no engine")
    parser.add_argument("--splits", nargs="+", metavar="P,D",
                        help="splits to measure (default: the smallest disjoint one, e.g. 1,1, and the whole "
                             "device for each phase)")
    parser.add_argument("--out", default="calibrated-profile.json", help="where to write the profile")
    parser.add_argument("--repeats", type=int, default=2, help="repetitions of each measurement (default 2)")
    parser.add_argument("--load-seconds", type=float, default=20.0,
                        help="length of the mixed load per split, for contention (default 20)")
    parser.add_argument("--vocab", type=int, default=1000, help="prompt token ids from [10, VOCAB)")
    parser.add_argument("--json", action="store_true", help="print the fitted profile as JSON")


def _get(client, url: str, path: str) -> dict:
    response = client.get(url + path, timeout=30)
    response.raise_for_status()
    return response.json()


def engine_facts(url: str) -> dict:
    import httpx

    with httpx.Client() as client:
        split = _get(client, url, "/semipd/split")
        info = _get(client, url, "/server_info")
    states = (info.get("internal_states") or [{}])[0]
    pick = lambda key, default: states.get(key) or info.get(key) or default
    return {"units": split["units"], "split": (split["split"]["prefill"], split["split"]["decode"]),
            "kv_capacity": int(pick("max_total_num_tokens", 0)),
            "chunk_size": int(pick("chunked_prefill_size", 0) or 8192),
            "max_batch": int(pick("max_running_requests", 0) or 256),
            "model": info.get("model_path", "?")}


def set_split(url: str, split: tuple[int, int]) -> None:
    import httpx

    response = httpx.post(url + "/semipd/split", json={"prefill": split[0], "decode": split[1],
                                                        "who": "calibrate-model"}, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"the engine refused split {split}: {response.text}")


def flush_cache(url: str) -> None:
    import httpx

    httpx.post(url + "/flush_cache", timeout=30)


def steps_since(url: str, since: float) -> list[dict]:
    import httpx

    with httpx.Client() as client:
        return _get(client, url, f"/semipd/steps?since={since}")["steps"]


def measure_split(url: str, split, repeats: int, load_s: float, vocab: int, chunk: int, say) -> dict:
    """Run the three phases on one split; the step records and the sequential requests' TTFTs."""
    from tuner.loadgen import replay
    from tuner.workload import Request, parse_workload

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
    from tuner.perf_model import Fitted, by_share

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


def run(args: argparse.Namespace, passthrough=()) -> int:
    from tuner.loadgen import ServerUnreachable, served_model
    from tuner.simulate import parse_pair

    url = (args.url or "").rstrip("/")
    try:
        if not url and not args.from_steps:
            raise ValueError("give --url (an engine to measure) or --from-steps FILE")
        if args.repeats < 1:
            raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
        if args.load_seconds <= 0:
            raise ValueError(f"--load-seconds must be positive, got {args.load_seconds}")
        splits = [parse_pair(s, "--splits") for s in args.splits] if args.splits else None
        say = (lambda text: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
        if args.from_steps:
            kept = json.loads(Path(args.from_steps).read_text())
            profile = fit_profile(kept["measured"], kept["facts"])
        else:
            served_model(url)
            profile = calibrate(url, splits, args.repeats, args.load_seconds, args.vocab, say,
                                keep=str(Path(args.out).with_suffix(".steps.json")))
    except (ValueError, ServerUnreachable, RuntimeError, OSError, KeyError) as exc:
        print(f"semipd calibrate-model: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # an engine without /semipd/ routes answers 404
        print(f"semipd calibrate-model: {url} is not a semi-pd engine ({exc})", file=sys.stderr)
        return 2
    profile.save(args.out)
    if args.json:
        print(open(args.out).read())
        return 0
    ms = lambda v: f"{v * 1e3:.3f} ms"
    print(f"wrote {args.out}: {profile.source}")
    for share, (a, b, c, d) in profile.prefill:
        print(f"  prefill on {share:.0%}: {ms(a)} + {ms(b)}/token + {c * 1e9:.3f} ns/pair + {ms(d)}/cached token")
    for share, (a, b, c) in profile.decode:
        print(f"  decode  on {share:.0%}: {ms(a)} + {b * 1e6:.3f} us/context token + {ms(c)}/request")
    print(f"  both running: prefill {profile.contention[0]:+.0%}, decode {profile.contention[1]:+.0%} "
          f"(overlapping shares: {profile.oversubscribed[0]:+.0%}, {profile.oversubscribed[1]:+.0%})")
    print(f"  request overhead {ms(profile.request_overhead_s)}, decode gap {ms(profile.decode_gap_s)}, "
          f"prefill hand-off {ms(profile.handoff_s)}; "
          f"median fit error prefill {profile.fit_error['prefill']:.1%}, decode {profile.fit_error['decode']:.1%}")
    print(f"  use: semipd simulate --hardware {args.out} --system semi-pd --split P,D ...")
    return 0
