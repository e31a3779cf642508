"""Benchmark: semi-PD (1,1 on 2 cores) against stock SGLang unified, on the same mixed workload.

1. Mixed load: the Azure conversation trace (lengths / 4: long prompts arriving while others
   decode), re-timed as Poisson arrivals at each rate, replayed on the `bench` model against stock
   SGLang (its own launcher) and `semipd serve --mode semi-pd --split 1,1`. Prints p50/p90 TTFT,
   p90 TPOT and mean E2E per system, and the ratios semi-PD / stock.
2. Switch latency: re-partitions under load on the semi-PD server, against its decode step time.
3. Soak: N re-partitions under continuous load (the `tiny` model, to keep it short): failed
   requests and the distribution of switch latency.

    python benchmarks/semipd_vs_unified.py [--rates 1.5,2.5] [--requests 200] [--soak 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx


import systems
from engine.default_model import cached_model
from loadtest.load_generator import replay
from loadtest.report import percentile, summarize
from loadtest.workload import load_azure_trace, with_poisson_arrivals

TRACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "azure_llm_2023_conv.csv"


def trace_requests(count: int):
    return load_azure_trace(TRACE, len_scale=0.25, max_prompt=1024, max_output=256)[:count]


def run_load(url: str, requests, vocab: int) -> list:
    return asyncio.run(replay(url, requests, vocab))


def mixed_load(args, log_dir: Path) -> dict:
    model = cached_model("bench")
    base = trace_requests(args.requests)
    results = {}
    for rate in args.rates:
        requests = with_poisson_arrivals(base, rate, seed=1)
        for system in ("stock", "semi-pd:1,1"):
            print(f"rate {rate}/s: {system} ...", flush=True)
            with systems.server(system, model, args.port, log_dir) as server:
                run_load(server.url, requests[:4], vocab=8000)  # warm-up
                results[(rate, system)] = summarize(run_load(server.url, requests, vocab=8000))
    return results


def switch_latency(args, log_dir: Path) -> dict:
    """20 re-partitions while the bench model decodes; switch time against decode step time."""
    model = cached_model("bench")
    requests = with_poisson_arrivals(trace_requests(60), 2.0, seed=2)
    with systems.server("semi-pd:1,1", model, args.port, log_dir) as server:
        since = time.time()
        done = threading.Event()

        def flip():
            splits, i = [(2, 1), (1, 2), (1, 1), (2, 2)], 0
            while not done.is_set() and i < 20:
                time.sleep(0.5)
                httpx.post(server.url + "/semipd/split", json=dict(zip(("prefill", "decode"), splits[i % 4])), timeout=30)
                i += 1

        flipper = threading.Thread(target=flip)
        flipper.start()
        records = run_load(server.url, requests, vocab=8000)
        done.set()
        flipper.join()
        history = httpx.get(server.url + "/semipd/split", timeout=30).json()["history"]
        steps = httpx.get(server.url + "/semipd/steps", params={"since": since}, timeout=30).json()["steps"]
    switches = [h["switch_ms"] for h in history if h["old"] is not None]
    decode_ms = [1e3 * (s["end"] - s["start"]) for s in steps if s["worker"] == "decode"]
    return {"switches": len(switches), "switch_ms_p50": statistics.median(switches),
            "switch_ms_max": max(switches), "decode_step_ms_p50": statistics.median(decode_ms),
            "failed": sum(not r.ok for r in records)}


def soak(args, log_dir: Path) -> dict:
    """args.soak re-partitions under continuous load on the tiny model."""
    model = cached_model("tiny")
    rng = random.Random(3)
    with systems.server("semi-pd:1,1", model, args.port, log_dir) as server:
        stop = threading.Event()
        records = []

        pool = trace_requests(2000)

        def load():  # waves of 40 requests arriving at 40/s, until the re-partitions are done
            for i in range(0, 10**9, 40):
                if stop.is_set():
                    return
                wave = with_poisson_arrivals(pool[i % 2000:i % 2000 + 40], 40.0, seed=i)
                records.extend(run_load(server.url, wave, vocab=2000))

        loader = threading.Thread(target=load)
        loader.start()
        codes = []
        with httpx.Client(timeout=30) as client:
            for n in range(args.soak):
                split = {"prefill": rng.randint(1, 2), "decode": rng.randint(1, 2)}
                codes.append(client.post(server.url + "/semipd/split", json=split).status_code)
                if n % 100 == 99:
                    print(f"  soak: {n + 1}/{args.soak} re-partitions, {len(records)} requests done", flush=True)
                time.sleep(0.02)
        stop.set()
        loader.join()
        history = httpx.get(server.url + "/semipd/split", timeout=30).json()["history"]
    switches = [h["switch_ms"] for h in history if h["old"] is not None]
    return {"repartitions": len(switches), "rejected": sum(c != 200 for c in codes),
            "requests": len(records), "failed": sum(not r.ok for r in records),
            "incomplete": sum(r.ok and r.output_len == 0 for r in records),
            "switch_ms_p50": percentile(switches, 50), "switch_ms_p90": percentile(switches, 90),
            "switch_ms_p99": percentile(switches, 99), "switch_ms_max": max(switches)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[1.5, 2.5])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--soak", type=int, default=1000, help="re-partitions in the soak run (0: skip)")
    parser.add_argument("--port", type=int, default=31100)
    parser.add_argument("--out", default="out/semipd_vs_unified.json")
    args = parser.parse_args()
    if not TRACE.is_file():
        parser.error(f"the Azure trace is not at {TRACE} (../shared/data beside the checkout)")
    log_dir = Path(tempfile.mkdtemp(prefix="semipd-bench-"))

    mixed = mixed_load(args, log_dir)
    print(f"\nmixed load: {args.requests} Azure conv requests (lengths / 4), Poisson arrivals, bench model, "
          f"2 cores (logs in {log_dir})")
    print(f"{'rate':>5} {'metric':12} {'stock':>9} {'semi-pd':>9} {'semi-pd/stock':>14}")
    for rate in args.rates:
        stock, ours = mixed[(rate, "stock")], mixed[(rate, "semi-pd:1,1")]
        for key in ("ttft_p50_s", "ttft_p90_s", "tpot_p50_s", "tpot_p90_s", "e2e_mean_s"):
            print(f"{rate:5.2f} {key:12} {stock[key] * 1e3:8.1f}m {ours[key] * 1e3:8.1f}m {ours[key] / stock[key]:14.2f}")
        print(f"{rate:5.2f} {'failed':12} {stock['failed']:9d} {ours['failed']:9d}")

    switch = switch_latency(args, log_dir)
    print(f"\nswitch latency under load (bench): median {switch['switch_ms_p50']:.2f} ms, max "
          f"{switch['switch_ms_max']:.2f} ms over {switch['switches']} re-partitions; median decode step "
          f"{switch['decode_step_ms_p50']:.1f} ms; ratio {switch['switch_ms_max'] / switch['decode_step_ms_p50']:.3f} "
          f"(goal < 1); failed requests {switch['failed']}")

    soaked = soak(args, log_dir) if args.soak else {}
    if soaked:
        print(f"\nsoak (tiny): {soaked['repartitions']} re-partitions, {soaked['requests']} requests, "
              f"{soaked['failed']} failed, {soaked['rejected']} re-partitions rejected; switch latency "
              f"p50 {soaked['switch_ms_p50']:.2f} ms, p90 {soaked['switch_ms_p90']:.2f} ms, "
              f"p99 {soaked['switch_ms_p99']:.2f} ms, max {soaked['switch_ms_max']:.2f} ms")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"mixed": {f"{r}/{s}": v for (r, s), v in mixed.items()},
                                          "switch": switch, "soak": soaked}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
