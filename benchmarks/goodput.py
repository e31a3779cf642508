"""Benchmark: goodput of stock SGLang, semipd unified and semi-PD static splits, side by side.

The `bench` model on this machine's cores; the Azure conversation trace scaled to the model
(lengths / 4, clipped); tight SLOs from `calibrate-slo` on stock SGLang (7.5x its unloaded median
TTFT and TPOT). For each system and rate, the same requests re-timed to that rate; goodput is the
highest rate at which >= 90% of requests meet both SLOs. Prints attainment per rate, goodput
ratios against stock SGLang, the mean E2E latency ratio at the highest rate every system completed,
and writes a plot.

    python benchmarks/goodput.py [--rates 1.5,2.5,3.5,4.5] [--requests 200] [--splits 1,1:2,1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import systems
from engine.default_model import cached_model
from loadtest.bench import plot_attainment, run_rate
from loadtest.calibrate_slo import calibrate
from loadtest.report import goodput, summarize
from loadtest.workload import mean_rate, parse_workload, scale_rate

TRACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "azure_llm_2023_conv.csv"
VOCAB = 8000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="1.5,2.5,3.5,4.5")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--splits", default="1,1:1,1+lend",
                        help="semi-PD static splits to try, ':'-separated ('+lend': --lend-idle-cores)")
    parser.add_argument("--port", type=int, default=31300)
    parser.add_argument("--out", default="out/goodput")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="semipd-goodput-"))
    requests = parse_workload(f"trace:{TRACE},len_scale=0.25,max_prompt=1024,max_output=256")[: args.requests]
    model = cached_model("bench")

    results, slo = [], None
    for system in ["stock", "unified", *(f"semi-pd:{s}" for s in args.splits.split(":"))]:
        with systems.server(system, model, args.port, log_dir) as server:
            if slo is None:
                slo = calibrate(server.url, requests[:10], VOCAB)["tight"]
                print(f"tight SLOs from stock SGLang: TTFT {slo['ttft_slo_s']:.3f} s, TPOT {slo['tpot_slo_s']:.3f} s",
                      flush=True)
            per_rate = []
            for index, rate in enumerate(rates):
                timed = scale_rate(requests, rate / mean_rate(requests))
                records, duration = run_rate(server.url, timed, VOCAB, show_progress=False, label=system,
                                             seed=1 + index)  # fresh prompts: no radix-cache hits
                summary = summarize(records, slo["ttft_slo_s"], slo["tpot_slo_s"], duration)
                per_rate.append({"rate": rate, **summary})
                print(f"{system:12} rate {rate:4.2f}: attainment {summary['slo_attainment']:6.1%} (TTFT "
                      f"{summary['ttft_attainment']:6.1%}, TPOT {summary['tpot_attainment']:6.1%}), p90 TTFT "
                      f"{summary['ttft_p90_s'] * 1e3:7.1f} ms, p90 TPOT {summary['tpot_p90_s'] * 1e3:6.1f} ms, "
                      f"mean E2E {summary['e2e_mean_s']:.2f} s, failed {summary['failed']}", flush=True)
            results.append({"label": system, "rates": per_rate,
                            "goodput_rps": goodput({r["rate"]: r["slo_attainment"] for r in per_rate})})

    stock = results[0]
    best_semipd = max(results[2:], key=lambda r: r["goodput_rps"])
    common = max(r for r in rates if all(x["rates"][rates.index(r)]["failed"] == 0 for x in results))
    e2e = {x["label"]: x["rates"][rates.index(common)]["e2e_mean_s"] for x in results}
    print(f"\nbench model, {args.requests} Azure conv requests (lengths / 4), SLOs TTFT "
          f"{slo['ttft_slo_s']:.3f} s / TPOT {slo['tpot_slo_s']:.3f} s (logs in {log_dir})")
    print(f"{'system':14} {'goodput req/s':>14} {'vs stock':>9} {f'mean E2E @ {common}/s':>18} {'vs stock':>9}")
    for x in results:
        ratio = x["goodput_rps"] / stock["goodput_rps"] if stock["goodput_rps"] else float("inf")
        print(f"{x['label']:14} {x['goodput_rps']:14.2f} {ratio:9.2f} {e2e[x['label']]:17.2f}s "
              f"{e2e[stock['label']] / e2e[x['label']]:8.2f}x")
    print(f"best static semi-PD split: {best_semipd['label']}")
    plot_attainment(results, str(out / "attainment.png"))
    (out / "results.json").write_text(json.dumps({"slo": slo, "results": results}, indent=2))
    print(f"plot: {out / 'attainment.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
