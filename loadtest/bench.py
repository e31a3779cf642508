"""Replaying a workload against a server at one or more rates: SLO attainment per rate, goodput.

At given rates, the workload's arrivals are re-timed so that its mean rate is each rate in turn
(the requests and their lengths stay the same); the goodput is the highest rate at which at least
90% of requests meet both SLOs. Also the report `semipd bench` and `semipd simulate` print, and
the attainment plot.
"""

from __future__ import annotations

import asyncio
import sys
import time

from tqdm import tqdm

from loadtest.load_generator import replay
from loadtest.report import goodput, summarize, write_records
from loadtest.workload import mean_rate, scale_rate

ATTAINMENT_TARGET = 0.9


def run_rate(url: str, requests, vocab: int, show_progress: bool, label: str, seed: int = 0, api: str = "openai"):
    """Replay once. Give each replay on the same server its own `seed`: the same prompts again
    would hit the radix cache and flatter the later runs."""
    bar = tqdm(total=len(requests), desc=label, unit="req", file=sys.stderr) if show_progress else None
    started = time.perf_counter()
    records = asyncio.run(replay(url, requests, vocab, seed=seed, on_done=(lambda _: bar.update()) if bar else None,
                                 api=api))
    if bar:
        bar.close()
    return records, time.perf_counter() - started


def bench(url: str, requests, ttft_slo_s: float, tpot_slo_s: float, rates: list[float] | None = None,
          vocab: int = 1000, label: str = "", workload: str = "", records_path: str | None = None,
          show_progress: bool = False, api: str = "openai") -> dict:
    """Replay `requests` at each rate (None: as they are timed); the report (`label` and the
    `workload` spec are its names), the last rate's summary at the top level. With
    `records_path`, one JSON line per request is appended there. `api`: see load_generator."""
    natural = mean_rate(requests)
    per_rate = []
    for index, rate in enumerate(rates or [natural]):
        timed = requests if rates is None else scale_rate(requests, rate / natural)
        records, duration = run_rate(url, timed, vocab, show_progress, f"{label} @ {rate:.2f}/s", seed=index, api=api)
        if records_path:
            write_records(records_path, records, label=label, rate=rate)
        per_rate.append({"rate": rate, **summarize(records, ttft_slo_s, tpot_slo_s, duration)})
    return {"label": label, "workload": workload, "ttft_slo_s": ttft_slo_s, "tpot_slo_s": tpot_slo_s,
            **per_rate[-1],
            "goodput_rps": goodput({r["rate"]: r["slo_attainment"] for r in per_rate}, ATTAINMENT_TARGET),
            "rates": per_rate}


def print_report(result: dict) -> None:
    ms = lambda v: f"{v * 1e3:8.1f}"
    print(f"\n{result['label']}: {result['workload']}")
    print(f"SLOs: TTFT {result['ttft_slo_s']} s, TPOT {result['tpot_slo_s']} s")
    print(f"{'rate':>6} {'done':>5} {'fail':>4} {'TTFT p50':>8} {'p90':>8} {'p99':>8} {'TPOT p50':>8} "
          f"{'p90':>8} {'p99':>8} {'ITL p90':>8} {'E2E mean':>8} {'attain':>6} {'ttft ok':>7} {'tpot ok':>7}  (ms)")
    for r in result["rates"]:
        print(f"{r['rate']:6.2f} {r['completed']:5d} {r['failed']:4d} {ms(r['ttft_p50_s'])} {ms(r['ttft_p90_s'])} "
              f"{ms(r['ttft_p99_s'])} {ms(r['tpot_p50_s'])} {ms(r['tpot_p90_s'])} {ms(r['tpot_p99_s'])} "
              f"{ms(r['itl_p90_s'])} {ms(r['e2e_mean_s'])} {r['slo_attainment']:6.1%} "
              f"{r['ttft_attainment']:7.1%} {r['tpot_attainment']:7.1%}")
    print(f"goodput (highest rate with >= {ATTAINMENT_TARGET:.0%} attainment): {result['goodput_rps']:.2f} req/s")


def plot_attainment(results: list[dict], path: str, title: str | None = None,
                    xlabel: str = "request rate (req/s)") -> None:
    """Attainment vs rate, one line per result ({label, goodput_rps, rates: [{rate, slo_attainment}]})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for result in results:
        rates = [r["rate"] for r in result["rates"]]
        ax.plot(rates, [100 * r["slo_attainment"] for r in result["rates"]], marker="o",
                label=f"{result['label']} (goodput {result['goodput_rps']:.2f}/s)")
    ax.axhline(100 * ATTAINMENT_TARGET, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_ylabel("requests meeting both SLOs (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
