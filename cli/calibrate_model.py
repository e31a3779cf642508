"""`semipd calibrate-model`: measure a running semi-PD engine's step times and fit the simulator's
step-time model to them, so that `semipd simulate --hardware FILE.json` predicts that engine; or,
with --from-vidur, fit a GPU's operator curves to Vidur's measured profiles.

How it measures and what it fits: simulator/calibrate.py (an engine), simulator/gpu_profile.py
(Vidur profiles).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.arguments import parse_pair

HELP = "fit the simulator's step-time model to a running semi-pd engine, or to Vidur's GPU profiles"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0].split(": ", 1)[1]
    parser.add_argument("--url", help="a `semipd serve --mode semi-pd` server")
    parser.add_argument("--from-vidur", metavar="DIR",
                        help="a Vidur compute profile (DIR/mlp.csv) to fit a GPU profile to, no engine")
    parser.add_argument("--model", help="with --from-vidur: the model's name, for the profile")
    parser.add_argument("--gpu", help="with --from-vidur: the GPU measured (default: from DIR's path, e.g. a100)")
    parser.add_argument("--network", metavar="DIR",
                        help="with --from-vidur: a Vidur network profile (all_reduce.csv, send_recv.csv) to fit too")
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


def run(args: argparse.Namespace, passthrough=()) -> int:
    if args.from_vidur:
        return run_from_vidur(args)
    from loadtest.load_generator import ServerUnreachable, served_model
    from simulator.calibrate import calibrate, refit

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
            profile = refit(args.from_steps)
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
    if saved_as_json(profile, args):
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


def run_from_vidur(args: argparse.Namespace) -> int:
    from simulator.gpu_profile import calibrate_from_vidur, gpu_of_path, hardware_named
    from simulator.operator_model import describe

    try:
        if not args.model:
            raise ValueError("--from-vidur needs --model NAME (the model the profile is for)")
        if args.url:
            raise ValueError("give --url (an engine) or --from-vidur DIR (measurements), not both")
        gpu = hardware_named(args.gpu) if args.gpu else gpu_of_path(args.from_vidur)
        profile = calibrate_from_vidur(args.from_vidur, args.model, gpu, args.network)
    except (ValueError, OSError, KeyError) as exc:  # ProfileError and ProfileConfigError are ValueErrors
        print(f"semipd calibrate-model: {exc}", file=sys.stderr)
        return 2
    if saved_as_json(profile, args):
        return 0
    error = profile.fit_error["operators"]
    print(f"wrote {args.out}: {profile.source}")
    for fit in profile.operators:
        per_op = error["per_operator"][fit.op]
        print(f"  {fit.op:25} {describe(fit)}; median error {per_op['median_rel_error']:.1%}")
    print(f"  all operators: median error {error['median_rel_error']:.1%}, max {error['max_rel_error']:.0%} "
          f"over {error['count']} measurements")
    for fit in profile.collectives:
        print(f"  {fit.collective} over {fit.workers} GPUs ({fit.devices_per_node} per node): "
              f"{fit.latency_s * 1e6:.0f} us + bytes at {fit.bus_bandwidth / 1e9:.1f} GB/s bus bandwidth")
    if "collectives" in profile.fit_error:
        print(f"  collectives: median error {profile.fit_error['collectives']['median_rel_error']:.1%}")
    print(f"  check: semipd validate-profile --hardware {args.out} --vidur DIR --model {args.model}")
    return 0


def saved_as_json(profile, args: argparse.Namespace) -> bool:
    """Write the profile to --out; with --json also print it (and nothing else)."""
    profile.save(args.out)
    if args.json:
        print(open(args.out).read())
    return args.json
