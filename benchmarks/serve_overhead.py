"""Benchmark: `semipd serve --mode unified` against stock SGLang on the same model and flags.

Prints, per model preset and per system, the start-up time (launch to /health 200), the RSS of the
whole process tree, and single-request TTFT and TPOT (medians), then the ratios semipd / stock
(goal: within 5%). Systems alternate round by round so that drift on a noisy machine hits both.
For `bench` it also prints the step times that justify the preset: a 512-token prefill (TTFT of a
lone request) against a decode step at batch 16 (TPOT with 16 requests decoding together).

    python benchmarks/serve_overhead.py [--presets tiny,bench] [--rounds 2] [--out out/serve_overhead.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

import psutil


import systems
from engine.default_model import cached_model
from loadtest.load_generator import run_concurrently
from stack.server_process import ServerProcess

PROMPT_LEN, NEW_TOKENS, SINGLE_REQUESTS = 256, 64, 8


def prompt(length: int, seed: int) -> list[int]:
    import random

    rng = random.Random(seed)
    return [rng.randrange(10, 2000) for _ in range(length)]


def tree_rss_mb(server: ServerProcess) -> float:
    total = 0
    for pid in server.pids():
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def measure(system: str, model: Path, port: int, log_dir: Path, step_times: bool) -> dict:
    url = f"http://127.0.0.1:{port}"
    with systems.server(system if system == "stock" else "unified", model, port, log_dir) as server:
        asyncio.run(run_concurrently(url, [prompt(32, 0)], 4))  # first-request warm-up
        singles = [asyncio.run(run_concurrently(url, [prompt(PROMPT_LEN, i)], NEW_TOKENS))[0]
                   for i in range(SINGLE_REQUESTS)]
        failed = [r.error for r in singles if not r.ok]
        if failed:
            raise RuntimeError(f"{system}: {failed[0]}")
        result = {"startup_s": server.ready_after_s, "rss_mb": tree_rss_mb(server),
                  "ttft_ms": 1e3 * median(r.ttft_s for r in singles),
                  "tpot_ms": 1e3 * median(r.tpot_s for r in singles)}
        if step_times:
            prefill = [asyncio.run(run_concurrently(url, [prompt(512, 100 + i)], 2))[0] for i in range(3)]
            batch = asyncio.run(run_concurrently(url, [prompt(16, 200 + i) for i in range(16)], 64))
            result["prefill_512_ms"] = 1e3 * median(r.ttft_s for r in prefill)
            result["decode_step_bs16_ms"] = 1e3 * median(r.tpot_s for r in batch)
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,bench")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port", type=int, default=31000)
    parser.add_argument("--out", default="out/serve_overhead.json")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="semipd-bench-"))
    report = {}
    for preset in args.presets.split(","):
        model = cached_model(preset)
        runs = {"stock": [], "semipd": []}
        for r in range(args.rounds):
            order = ["stock", "semipd"] if r % 2 == 0 else ["semipd", "stock"]
            for system in order:
                print(f"[{preset}] round {r + 1}/{args.rounds}: {system} ...", flush=True)
                runs[system].append(measure(system, model, args.port, log_dir, preset == "bench"))
        report[preset] = {s: {k: median(run[k] for run in rs) for k in rs[0]} for s, rs in runs.items()}

    keys = ["startup_s", "rss_mb", "ttft_ms", "tpot_ms"]
    print(f"\nsingle request: prompt {PROMPT_LEN} tokens, {NEW_TOKENS} new tokens, median of "
          f"{SINGLE_REQUESTS} requests x {args.rounds} rounds (logs in {log_dir})")
    print(f"{'preset':8} {'metric':12} {'stock':>10} {'semipd':>10} {'semipd/stock':>13}")
    for preset, by_system in report.items():
        for key in keys:
            stock, ours = by_system["stock"][key], by_system["semipd"][key]
            print(f"{preset:8} {key:12} {stock:10.1f} {ours:10.1f} {ours / stock:13.3f}")
    if "bench" in report:
        b = report["bench"]["semipd"]
        print(f"\nbench model step times (semipd unified, 2 cores): prefill of 512 tokens "
              f"{b['prefill_512_ms']:.1f} ms; decode step at batch 16 {b['decode_step_bs16_ms']:.1f} ms; "
              f"ratio {b['prefill_512_ms'] / b['decode_step_bs16_ms']:.1f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
