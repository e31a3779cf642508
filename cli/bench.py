"""`semipd bench`: replay a workload against a server at one or more rates; report SLO attainment.

With --rates, the workload's arrivals are re-timed so that its mean rate is each given rate (the
requests and their lengths stay the same), and the report ends with the goodput: the highest rate
at which at least 90% of requests meet both SLOs.
"""

from __future__ import annotations

import argparse
import json
import sys

from cli.arguments import parse_rates

HELP = "load-test a server with a workload; TTFT/TPOT report, SLO attainment and goodput"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loadtest.workload import SPEC_HELP

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
    parser.add_argument("--api", choices=("auto", "openai", "sglang"), default="auto",
                        help="openai: /v1/completions (SGLang, vLLM); sglang: SGLang's /generate, which SGLang's "
                             "router needs (it refuses token-id prompts on /v1/completions); auto (default): "
                             "sglang for SGLang's router, openai for any other server")
    parser.add_argument("--records", metavar="FILE", help="append one JSON line per request to FILE")
    parser.add_argument("--label", default=None, help="name of the system in reports and plots")
    parser.add_argument("--plot", metavar="FILE.png", help="plot attainment vs rate (with --compare)")
    parser.add_argument("--compare", nargs="*", default=[], metavar="RESULT.json",
                        help="earlier `--json` results to draw in the same plot")
    parser.add_argument("--json", action="store_true", help="print one JSON object and nothing else")


def run(args: argparse.Namespace, passthrough=()) -> int:
    from loadtest.bench import bench, plot_attainment, print_report
    from loadtest.load_generator import ServerUnreachable, detect_api, served_model
    from loadtest.workload import WorkloadError, parse_workload

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
    api = detect_api(args.url) if args.api == "auto" else args.api
    if args.api == "auto" and api == "sglang" and not args.json:
        print(f"semipd bench: {args.url} is SGLang's router: prompts go to /generate (--api sglang)", file=sys.stderr)

    label = args.label or args.url
    result = bench(args.url, requests, args.ttft_slo, args.tpot_slo, rates, args.vocab, label, args.workload,
                   args.records, show_progress=not args.json and sys.stderr.isatty(), api=api)
    result["api"] = api
    if args.plot:
        plot_attainment([result, *(json.load(open(p)) for p in args.compare)], args.plot)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    return 0
