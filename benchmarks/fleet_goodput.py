"""Benchmark: goodput of a fleet, two semi-pd engines (one core each) behind SGLang's router, against
one semi-pd engine with both cores, under the same load; the ratio fleet / one engine.

On 2 cores this measures what the router and a second engine cost: the fleet has no more compute,
each of its engines has half of it, and an engine of one core has a single split (1,1: unified).
Each engine has its tuner (`mpc`, in this process), as `semipd up` gives it.

Workload: benchmarks/goodput.py's (the Azure conversation trace from `--row`, lengths / 4), sent
through SGLang's /generate (the router forwards token ids only there) to both systems alike; tight
SLOs calibrated on the single engine (7.5x its unloaded median TTFT and TPOT). Every run starts
at the split 1,1 with fresh tuners and fresh prompts, after a cache flush.

    python benchmarks/fleet_goodput.py [--rates 2,3,4,5] [--repeats 1] [--requests 200]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import httpx

import systems
from goodput import VOCAB, TunerThread, median_spread, set_split, workload
from engine.default_model import cached_model
from loadtest.bench import run_rate
from loadtest.calibrate_slo import calibrate
from loadtest.report import goodput, summarize
from loadtest.workload import mean_rate, scale_rate
from stack.fleet import Fleet, device_groups, semipd_engine

API = "sglang"


@contextlib.contextmanager
def one_engine(model: Path, port: int, work: Path):
    with systems.server("semi-pd:1,1", model, port, work) as server:
        yield server.url, [server.url]


@contextlib.contextmanager
def fleet(model: Path, port: int, work: Path):
    groups = device_groups(sorted(os.sched_getaffinity(0)), 2)
    ports = [port + 1, port + 2]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SEMIPD_ADMIN_KEY", None)
    the_fleet = Fleet(work, "127.0.0.1", port, ports, groups, env, "cache-aware", port + 3,
                      [semipd_engine(g, "127.0.0.1", p, ["--model", str(model)]) for g, p in zip(groups, ports)])
    parts = the_fleet.launch()
    try:
        the_fleet.wait_ready(600)
        yield the_fleet.router.url, [e.url for e in the_fleet.engines]
    finally:
        for _, part in reversed(parts):
            part.stop()


def one_run(url: str, engines: list[str], requests, rate: float, seed: int, slo: dict, work: Path) -> dict:
    """One rate: every engine flushed and back at 1,1, its tuner started fresh; the load through `url`."""
    for engine in engines:
        httpx.post(engine + "/flush_cache", timeout=60)
        set_split(engine, (1, 1))
    timed = scale_rate(requests, rate / mean_rate(requests))
    with contextlib.ExitStack() as stack:
        for engine in engines:
            name = engine.rsplit(":", 1)[1]  # the engine's port: one store per engine and run
            stack.enter_context(TunerThread(engine, slo, work / f"tuner-{name}-{rate}-{seed}.db", interval_s=1.0))
        records, duration = run_rate(url, timed, VOCAB, show_progress=False, label="", seed=seed, api=API)
    errors = sorted({r.error for r in records if not r.ok})
    return {"rate": rate, "seed": seed, "errors": errors, **summarize(records, slo["ttft_slo_s"], slo["tpot_slo_s"], duration)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="2,3,4,5")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--row", type=int, default=6000, help="first row of the trace to replay")
    parser.add_argument("--model", default="bench", help="a preset of `semipd make-model`")
    parser.add_argument("--slo", metavar="TTFT,TPOT", help="SLOs in seconds (default: tight, calibrated on the "
                        "single engine); to extend an earlier run to other rates")
    parser.add_argument("--port", type=int, default=31400)
    parser.add_argument("--out", default="out/fleet-goodput")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    if len(os.sched_getaffinity(0)) < 2:
        parser.error("two cores or more are needed: one per engine of the fleet")
    out, work = Path(args.out), Path(tempfile.mkdtemp(prefix="semipd-fleet-goodput-"))
    out.mkdir(parents=True, exist_ok=True)
    requests, model = workload(args.row, args.requests), cached_model(args.model)

    slo, runs = None, {}
    if args.slo:
        ttft, tpot = (float(x) for x in args.slo.split(","))
        slo = {"ttft_slo_s": ttft, "tpot_slo_s": tpot}
    for name, system in (("one engine", one_engine), ("fleet of 2", fleet)):
        with system(model, args.port, work) as (url, engines):
            if slo is None:
                slo = calibrate(url, requests[:10], VOCAB)["tight"]
            for index, rate in enumerate(rates):
                for repeat in range(args.repeats):
                    run = one_run(url, engines, requests, rate, 1 + 100 * index + repeat, slo, work)
                    runs.setdefault(name, []).append(run)
                    print(f"{name:10} rate {rate:4.2f} #{repeat + 1}: attainment {run['slo_attainment']:6.1%} "
                          f"(TTFT {run['ttft_attainment']:6.1%}, TPOT {run['tpot_attainment']:6.1%}), p90 TTFT "
                          f"{run['ttft_p90_s'] * 1e3:6.0f} ms, p90 TPOT {run['tpot_p90_s'] * 1e3:6.1f} ms, "
                          f"mean E2E {run['e2e_mean_s']:.2f} s, failed {run['failed']}"
                          + (f", errors {run['errors']}" if run["errors"] else ""), flush=True)

    print(f"\nSLOs (tight, 7.5x the single engine unloaded): TTFT {slo['ttft_slo_s'] * 1e3:.0f} ms, "
          f"TPOT {slo['tpot_slo_s'] * 1e3:.1f} ms")
    table = {name: {rate: median_spread([r["slo_attainment"] for r in mine if r["rate"] == rate])[0] for rate in rates}
             for name, mine in runs.items()}
    e2e = {name: {rate: median_spread([r["e2e_mean_s"] for r in mine if r["rate"] == rate])[0] for rate in rates}
           for name, mine in runs.items()}
    print(f"{'rate':>5} " + " ".join(f"{name + ' att.':>16} {'E2E s':>6}" for name in table))
    for rate in rates:
        print(f"{rate:5.2f} " + " ".join(f"{table[name][rate]:16.1%} {e2e[name][rate]:6.2f}" for name in table))
    goodputs = {name: goodput(per) for name, per in table.items()}
    ratio = goodputs["fleet of 2"] / goodputs["one engine"] if goodputs["one engine"] else float("nan")
    print("\ngoodput (highest rate at >= 90% joint attainment): " + ", ".join(
        f"{name} {value:.2f} req/s" for name, value in goodputs.items()) + f"; fleet / one engine {ratio:.2f}x")
    (out / "results.json").write_text(json.dumps({"slo": slo, "runs": runs, "goodput": goodputs, "ratio": ratio},
                                                 indent=2, default=str))
    print(f"runs and summary: {out / 'results.json'}; logs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
