"""`semipd bench`: replay a workload against a server at one or more rates; report SLO attainment.

With --rates, the workload's arrivals are re-timed so that its mean rate is each given rate (the
requests and their lengths stay the same), and the report ends with the goodput: the highest rate
at which at least 90% of requests meet both SLOs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

HELP = "load-test a server with a workload; TTFT/TPOT report, SLO attainment and goodput"
ATTAINMENT_TARGET = 0.9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tuner.workload import SPEC_HELP

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.split("\n\n")[0].split(": ", 1)[1] + "\n\n" + SPEC_HELP
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:30000")
    parser.add_argument("--workload", required=True, metavar="SPEC", help="what to send (see above)")
    parser.add_argument("--ttft-slo", type=float, required=True, metavar="S", help="TTFT SLO in seconds")
    parser.add_argument("--tpot-slo", type=float, required=True, metavar="S", help="TPOT SLO in seconds")
    parser.add_argument("--rates", metavar="R1,R2,...",
                        help="re-time the workload to each mean rate (requests/s) in turn")
    parser.add_argument("--vocab", type=int, default=1000,
                        help="prompt token ids are drawn from [10, VOCAB) (default 1000)")
    parser.add_argument("--records", metavar="FILE", help="append one JSON line per request to FILE")
    parser.add_argument("--label", default=None, help="name of the system in reports and plots")
    parser.add_argument("--plot", metavar="FILE.png", help="plot attainment vs rate (with --compare)")
    parser.add_argument("--compare", nargs="*", default=[], metavar="RESULT.json",
                        help="earlier `--json` results to draw in the same plot")
    parser.add_argument("--json", action="store_true", help="print one JSON object and nothing else")


def parse_rates(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        rates = sorted(float(r) for r in text.split(","))
    except ValueError:
        raise ValueError(f"--rates {text!r} is not a list of numbers like 1,2,4") from None
    if any(r <= 0 for r in rates):
        raise ValueError(f"--rates {text!r}: every rate must be positive")
    return rates


def run_rate(url: str, requests, vocab: int, show_progress: bool, label: str, seed: int = 0):
    """Replay once. Give each replay on the same server its own `seed`: the same prompts again
    would hit the radix cache and flatter the later runs."""
    from tuner.loadgen import replay

    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(requests), desc=label, unit="req", file=sys.stderr)
    started = time.perf_counter()
    records = asyncio.run(replay(url, requests, vocab, seed=seed, on_done=(lambda _: bar.update()) if bar else None))
    if bar:
        bar.close()
    return records, time.perf_counter() - started


def run(args: argparse.Namespace, passthrough=()) -> int:
    from tuner.loadgen import ServerUnreachable, served_model
    from tuner.report import goodput, summarize, write_records
    from tuner.workload import WorkloadError, mean_rate, parse_workload, scale_rate

    try:
        for name in ("ttft_slo", "tpot_slo"):
            if getattr(args, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
        if args.vocab <= 10:
            raise ValueError(f"--vocab must be larger than 10, got {args.vocab}")
        rates = parse_rates(args.rates)
        requests = parse_workload(args.workload)
        served_model(args.url)
    except (ValueError, WorkloadError, ServerUnreachable) as exc:
        print(f"semipd bench: {exc}", file=sys.stderr)
        return 2

    label = args.label or args.url
    show_progress = not args.json and sys.stderr.isatty()
    natural = mean_rate(requests)
    per_rate = []
    for index, rate in enumerate(rates or [natural]):
        timed = requests if rates is None else scale_rate(requests, rate / natural)
        records, duration = run_rate(args.url, timed, args.vocab, show_progress, f"{label} @ {rate:.2f}/s",
                                     seed=index)
        if args.records:
            write_records(args.records, records, label=label, rate=rate)
        per_rate.append({"rate": rate, **summarize(records, args.ttft_slo, args.tpot_slo, duration)})
    result = {"label": label, "workload": args.workload, "ttft_slo_s": args.ttft_slo,
              "tpot_slo_s": args.tpot_slo, **per_rate[-1],
              "goodput_rps": goodput({r["rate"]: r["slo_attainment"] for r in per_rate}, ATTAINMENT_TARGET),
              "rates": per_rate}
    if args.plot:
        plot_attainment([result, *(json.load(open(p)) for p in args.compare)], args.plot)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    return 0


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
