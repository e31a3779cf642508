"""Benchmark: goodput of stock SGLang against semipd's modes, side by side, repeated.

Systems (`--systems`, comma-separated):
- `stock`: plain `python -m sglang.launch_server` (SGLang's own CPU attention, torch_native), the
  same stand-in, dtype, KV budget and metrics buckets as semipd;
- `unified`: `semipd serve --mode semi-pd --split N,N`: semipd's engine in unified mode (SGLang's
  own loop on all N cores, our batched decode attention);
- `split`: the same engine at the split 1,1 (the phases on separate cores);
- `tuned`: the same engine from 1,1 with the tuner (`mpc`, in this process) moving the split.
One engine serves unified, split and tuned (a split is a live setting), so their only difference
is the split in force; stock against unified is engine efficiency, split or tuned against unified
is the phase split.

Workload: the Azure conversation trace from row `--row` (lengths / 4, clipped), `--requests`
requests with their own arrival gaps scaled to each rate; tight SLOs calibrated on stock SGLang
(7.5x its unloaded median TTFT and TPOT). Every run sends fresh prompts (no radix-cache hits) after
a cache flush; each rate is repeated `--repeats` times. Prints per run, then per system and rate
the median and spread, goodput (highest rate with >= 90% joint attainment, from the medians), the
ratios, where each misses (TTFT or TPOT), and the owner loop's time breakdown.

    python benchmarks/goodput.py [--rates 2,3,4,5] [--repeats 3] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

import systems
from engine.default_model import cached_model
from loadtest.bench import run_rate
from loadtest.calibrate_slo import calibrate
from loadtest.report import goodput, summarize
from loadtest.workload import Request, load_azure_trace, mean_rate, scale_rate
from policies import load_params
from tuner.control_loop import Settings
from tuner.launch import start_tuner

TRACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "azure_llm_2023_conv.csv"
VOCAB = 8000
SYSTEMS = ("stock", "unified", "split", "tuned")


def workload(row: int, count: int) -> list[Request]:
    requests = load_azure_trace(TRACE, len_scale=0.25, max_prompt=1024, max_output=256)[row: row + count]
    first = requests[0].arrival_s
    return [Request(r.arrival_s - first, r.prompt_len, r.output_len) for r in requests]


def set_split(url: str, split: tuple[int, int]) -> None:
    r = httpx.post(url + "/semipd/split", json={"prefill": split[0], "decode": split[1], "who": "benchmark"}, timeout=60)
    r.raise_for_status()


class TunerThread:
    """The tuner as `semipd tune --policy mpc` runs it, in this process, fresh for each run."""

    def __init__(self, url: str, slo: dict, store: Path, interval_s: float):
        settings = Settings(slo["ttft_slo_s"], slo["tpot_slo_s"], "mpc", load_params("mpc"), True, interval_s)
        self.tuner, self.server = start_tuner(url, settings, str(store), "127.0.0.1", 0, fresh=True)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.tuner.run, args=(self.stop,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=30)
        self.server.shutdown()

    def moves(self) -> list[str]:
        return [f"{d['new'][0]},{d['new'][1]}" for d in self.tuner.store.decisions() if d["applied"]]


def one_run(url: str, system: str, requests, rate: float, seed: int, slo: dict, units: int, work: Path):
    httpx.post(url + "/flush_cache", timeout=60)
    if system != "stock":
        set_split(url, (units, units) if system == "unified" else (1, 1))
    timed = scale_rate(requests, rate / mean_rate(requests))
    since = time.time()
    link_before = worker_link(url) if system != "stock" else None
    moves = None
    if system == "tuned":
        with TunerThread(url, slo, work / f"tuner-{rate}-{seed}.db", interval_s=1.0) as tuner:
            records, duration = run_rate(url, timed, VOCAB, show_progress=False, label=system, seed=seed)
            moves = tuner.moves()
    else:
        records, duration = run_rate(url, timed, VOCAB, show_progress=False, label=system, seed=seed)
    summary = summarize(records, slo["ttft_slo_s"], slo["tpot_slo_s"], duration)
    loop = worker = None
    if system != "stock":
        loop = httpx.get(url + "/semipd/steps", params={"since": since}, timeout=60).json()["loop"]
        link = worker_link(url)
        worker = {key: link[key] - link_before.get(key, 0) for key in ("batches", "pipelined", "idle_with_work_s")}
        worker["seconds"] = time.time() - since
    errors = sorted({r.error for r in records if not r.ok})  # kept: a failure is never silent
    return {"system": system, "rate": rate, "seed": seed, "moves": moves, "loop": loop, "worker": worker,
            "errors": errors, **summary}


def worker_link(url: str) -> dict:
    """The prefill worker's link counters (reset when a worker is replaced, hence .get above)."""
    return httpx.get(url + "/semipd/workers", timeout=60).json()["link"]


def median_spread(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), (max(values) - min(values))


def report(runs: list[dict], rates: list[float], systems_run: list[str], slo: dict) -> dict:
    table = {}
    for system in systems_run:
        table[system] = {}
        for rate in rates:
            mine = [r for r in runs if r["system"] == system and r["rate"] == rate]
            if not mine:
                continue
            row = {}
            for key in ("slo_attainment", "ttft_attainment", "tpot_attainment", "ttft_p90_s", "tpot_p90_s", "e2e_mean_s"):
                row[key] = median_spread([r[key] for r in mine])
            row["failed"] = sum(r["failed"] for r in mine)
            table[system][rate] = row
    print(f"\nSLOs (tight, 7.5x stock unloaded): TTFT {slo['ttft_slo_s'] * 1e3:.0f} ms, TPOT {slo['tpot_slo_s'] * 1e3:.1f} ms")
    print(f"{'system':8} {'rate':>5} {'joint att.':>14} {'TTFT att.':>10} {'TPOT att.':>10} {'p90 TTFT ms':>16} "
          f"{'p90 TPOT ms':>16} {'mean E2E s':>14} {'misses':>7}")
    for system, per_rate in table.items():
        for rate, row in per_rate.items():
            (att, att_s), (tt, _), (tp, _) = row["slo_attainment"], row["ttft_attainment"], row["tpot_attainment"]
            misses = "TTFT" if tt < 0.9 <= tp else "TPOT" if tp < 0.9 <= tt else "both" if tt < 0.9 and tp < 0.9 else "-"
            print(f"{system:8} {rate:5.2f} {att:7.1%} ±{att_s / 2:5.1%} {tt:10.1%} {tp:10.1%} "
                  f"{row['ttft_p90_s'][0] * 1e3:9.0f} ±{row['ttft_p90_s'][1] * 5e2:5.0f} "
                  f"{row['tpot_p90_s'][0] * 1e3:9.1f} ±{row['tpot_p90_s'][1] * 5e2:5.1f} "
                  f"{row['e2e_mean_s'][0]:7.2f} ±{row['e2e_mean_s'][1] / 2:5.2f} {misses:>7}")
    goodputs = {s: goodput({rate: row["slo_attainment"][0] for rate, row in per.items()}) for s, per in table.items()}
    stock = goodputs.get("stock")
    print("\ngoodput (highest rate at >= 90% joint attainment, from the medians):")
    for system, value in goodputs.items():
        ratio = f"  {value / stock:.2f}x stock" if stock else ""
        print(f"  {system:8} {value:5.2f} req/s{ratio}")
    ratios = {}
    if goodputs.get("unified") and stock:
        ratios["engine efficiency (unified / stock)"] = goodputs["unified"] / stock
    for name in ("split", "tuned"):
        if goodputs.get(name) and goodputs.get("unified"):
            ratios[f"phase split ({name} / unified)"] = goodputs[name] / goodputs["unified"]
    for name, value in ratios.items():
        print(f"  {name}: {value:.2f}x")
    if stock:
        sustained = [rate for rate, row in table["stock"].items() if row["slo_attainment"][0] >= 0.9]
        at = max(sustained) if sustained else min(table["stock"])
        print(f"\nmean E2E at {at} req/s (the highest rate stock sustains): " + ", ".join(
            f"{s} {per[at]['e2e_mean_s'][0]:.2f} s ({per[at]['e2e_mean_s'][0] / table['stock'][at]['e2e_mean_s'][0]:.2f}x)"
            for s, per in table.items() if at in per))
        worst = {s: min(per[r]["slo_attainment"][0] / max(1e-9, table["stock"][r]["slo_attainment"][0])
                        for r in per if r in table["stock"] and table["stock"][r]["slo_attainment"][0] > 0)
                 for s, per in table.items() if s != "stock"}
        print("lowest attainment ratio to stock at any rate: " + ", ".join(f"{s} {v:.2f}x" for s, v in worst.items()))
    print("\nowner loop, share of time per phase (all runs of the system):")
    for system in systems_run:
        loops = [r["loop"] for r in runs if r["system"] == system and r["loop"]]
        if not loops:
            continue
        wall = sum(lp["seconds"] for lp in loops)
        phases: dict[str, float] = {}
        for lp in loops:
            for name, v in lp["phases"].items():
                phases[name] = phases.get(name, 0.0) + v["seconds"]
        print(f"  {system:8} " + ", ".join(f"{n} {s / wall:.0%}" for n, s in sorted(phases.items(), key=lambda kv: -kv[1])))
    print("\nprefill worker: batches, handed over while another ran, idle while a request of its next batch waited:")
    for system in systems_run:
        links = [r["worker"] for r in runs if r["system"] == system and r.get("worker") and r["worker"]["batches"]]
        if links:
            idle, wall = sum(w["idle_with_work_s"] for w in links), sum(w["seconds"] for w in links)
            print(f"  {system:8} {sum(w['batches'] for w in links)} batches, {sum(w['pipelined'] for w in links)} "
                  f"pipelined, idle with work {idle:.1f} s of {wall:.0f} s ({idle / wall:.1%})")
    return {"table": {s: {str(r): v for r, v in per.items()} for s, per in table.items()}, "goodput": goodputs,
            "ratios": ratios}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--rates", default="2,3,4,5")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--row", type=int, default=6000, help="first row of the trace to replay")
    parser.add_argument("--model", default="bench", help="a preset of `semipd make-model`")
    parser.add_argument("--engine-flags", default="", metavar="FLAGS",
                        help="extra `semipd serve` flags for semipd's engine, e.g. '--attention-backend torch_native' "
                             "(the loop breakdown with SGLang's attention)")
    parser.add_argument("--slo", metavar="TTFT,TPOT", help="SLOs in seconds (default: tight, calibrated on "
                        "the first system, stock when it runs); to extend an earlier run to other rates")
    parser.add_argument("--port", type=int, default=31300)
    parser.add_argument("--out", default="out/goodput")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    chosen = args.systems.split(",")
    unknown = set(chosen) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; valid: {', '.join(SYSTEMS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="semipd-goodput-"))
    requests = workload(args.row, args.requests)
    model = cached_model(args.model)
    units = len(__import__("os").sched_getaffinity(0))

    slo, runs = None, []
    if args.slo:
        ttft, tpot = (float(x) for x in args.slo.split(","))
        slo = {"ttft_slo_s": ttft, "tpot_slo_s": tpot}
    groups = [["stock"]] if "stock" in chosen else []
    ours = [s for s in chosen if s != "stock"]
    if ours:
        groups.append(ours)
    for group in groups:
        kind, extra = ("stock", []) if group == ["stock"] else ("semi-pd:1,1", args.engine_flags.split())
        with systems.server(kind, model, args.port, work, *extra) as server:
            if slo is None:
                slo = calibrate(server.url, requests[:10], VOCAB)["tight"]
            for index, rate in enumerate(rates):
                for repeat in range(args.repeats):
                    for system in group:  # interleaved, so that drift on the machine hits all alike
                        run = one_run(server.url, system, requests, rate, 1 + 100 * index + repeat, slo, units, work)
                        runs.append(run)
                        print(f"{system:8} rate {rate:4.2f} #{repeat + 1}: attainment {run['slo_attainment']:6.1%} "
                              f"(TTFT {run['ttft_attainment']:6.1%}, TPOT {run['tpot_attainment']:6.1%}), p90 TTFT "
                              f"{run['ttft_p90_s'] * 1e3:6.0f} ms, p90 TPOT {run['tpot_p90_s'] * 1e3:6.1f} ms, "
                              f"mean E2E {run['e2e_mean_s']:.2f} s, failed {run['failed']}"
                              + (f", moves {run['moves']}" if run["moves"] is not None else "")
                              + (f", errors {run['errors']}" if run["errors"] else ""), flush=True)
    summary = report(runs, rates, chosen, slo)
    (out / "results.json").write_text(json.dumps({"slo": slo, "runs": runs, **summary}, indent=2, default=str))
    print(f"\nruns and summary: {out / 'results.json'}; server logs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
