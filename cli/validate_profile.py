"""`semipd validate-profile`: predicted against measured time per operator, token count and TP,
for a GPU profile (or a named GPU's plain roofline) and a Vidur compute profile.

On the GPU a profile was fitted to, this is its fit error; on another GPU (say the A40 from an
A100 profile), its prediction from that GPU's datasheet alone.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "check a GPU profile's operator times against Vidur measurements"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0].split(": ", 1)[1]
    parser.add_argument("--hardware", required=True,
                        help="a profile .json from `semipd calibrate-model --from-vidur`, or a named GPU "
                             "(its plain roofline)")
    parser.add_argument("--vidur", required=True, metavar="DIR", help="a Vidur compute profile (DIR/mlp.csv)")
    parser.add_argument("--model", required=True, help="the model DIR measured, a simulator model name (e.g. llama-2-7b)")
    parser.add_argument("--gpu", help="the GPU DIR measured (default: from its path, e.g. a40)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON: median_rel_error, max_rel_error, per_operator, rows")


def run(args: argparse.Namespace, passthrough=()) -> int:
    from simulator.gpu_profile import hardware_named, validate

    try:
        gpu = hardware_named(args.gpu) if args.gpu else None
        report = validate(args.hardware, args.vidur, args.model, gpu)
    except (ValueError, OSError, KeyError) as exc:
        print(f"semipd validate-profile: {exc}", file=sys.stderr)
        return 2
    report["model"] = args.model
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{args.model} on {report['gpu']}, predicted by {report['predicted_by']}:")
    print(f"  {'operator':25} {'TP':>3} {'tokens':>7} {'measured ms':>12} {'predicted ms':>13} {'error':>8}")
    for row in report["rows"]:
        if row["tokens"] in (1, 16, 128, 512, 2048, 4096, 16384, 32768):  # a readable sample; --json has all
            print(f"  {row['op']:25} {row['tp']:3d} {row['tokens']:7d} {row['measured_ms']:12.4f} "
                  f"{row['predicted_ms']:13.4f} {row['rel_error']:+8.1%}")
    print("\n  per operator (all token counts and TP degrees): median / max relative error")
    for op, summary in report["per_operator"].items():
        print(f"  {op:25} {summary['median_rel_error']:7.1%} {summary['max_rel_error']:7.0%}  ({summary['count']} rows)")
    print(f"  {'all':25} {report['median_rel_error']:7.1%} {report['max_rel_error']:7.0%}  ({report['count']} rows)")
    return 0
