"""`semipd calibrate-slo`: measure a server unloaded and propose SLOs the way semi-PD did.

The semi-PD paper set "tight" SLOs at about 7.5x and "loose" at about 10x the latency of a request
served alone. This sends requests from the workload one at a time (each after the previous one
finished), takes the median TTFT and TPOT, and multiplies.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "measure unloaded TTFT/TPOT and propose tight (7.5x) and loose (10x) SLOs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loadtest.calibrate_slo import DEFAULT_WORKLOAD

    parser.description = __doc__.split("\n\n")[1].replace("\n", " ")
    parser.add_argument("--url", required=True, help="server base URL")
    parser.add_argument("--workload", default=DEFAULT_WORKLOAD, metavar="SPEC",
                        help=f"whose request lengths to send (see `semipd bench --help`); default {DEFAULT_WORKLOAD}")
    parser.add_argument("--requests", type=int, default=10, help="how many requests (default 10)")
    parser.add_argument("--vocab", type=int, default=1000, help="prompt token ids from [10, VOCAB)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace, passthrough=()) -> int:
    from loadtest.calibrate_slo import calibrate
    from loadtest.load_generator import ServerUnreachable, served_model
    from loadtest.workload import WorkloadError, parse_workload

    try:
        if args.requests < 1:
            raise ValueError(f"--requests must be at least 1, got {args.requests}")
        served_model(args.url)
        requests = parse_workload(args.workload)[: args.requests]
        result = calibrate(args.url, requests, args.vocab)
    except (ValueError, WorkloadError, ServerUnreachable, RuntimeError) as exc:
        print(f"semipd calibrate-slo: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"unloaded, median of {result['requests']} requests: TTFT {result['ttft_p50_s'] * 1e3:.1f} ms, "
          f"TPOT {result['tpot_p50_s'] * 1e3:.1f} ms")
    for name in ("tight", "loose"):
        slo = result[name]
        print(f"{name:5} SLOs: --ttft-slo {slo['ttft_slo_s']:.3f} --tpot-slo {slo['tpot_slo_s']:.3f}")
    return 0
