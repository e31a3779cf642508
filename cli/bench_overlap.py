"""`semipd bench-overlap`: plain GEMM-then-all-reduce vs the tile-group overlapped layer.

Spawns N local processes joined by gloo (real processes, real loopback communication, one torch
thread each) and, per shape, times: the GEMM alone, the all-reduce alone, the plain sequence, and
the overlapped layer with the groups the tuner chose. Times are medians over repeats of the
slowest rank, after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HELP = "benchmark GEMM + all-reduce, plain vs overlapped by output-row groups (FlashOverlap-style)"

# (M tokens, N output features, K = this rank's slice of the input features): prefill-sized row-
# parallel GEMMs (o_proj / down_proj of small models split over ranks), from GEMM-heavy to
# communication-heavy on this CPU.
DEFAULT_SHAPES = "1024x2048x1024,1024x4096x256,2048x2048x128,512x1024x512"


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        try:
            m, n, k = (int(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"shape {item.strip()!r} is invalid; valid: MxNxK with positive integers, e.g. 1024x2048x512")
        if min(m, n, k) < 1:
            raise argparse.ArgumentTypeError(f"shape {item.strip()!r} has a dimension < 1; valid: >= 1")
        shapes.append((m, n, k))
    return shapes


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid; valid: an integer >= 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from engine.tensor_overlap.process_group import MAX_WORLD_SIZE

    parser.description = (
        "Time a row-parallel GEMM followed by an all-reduce, done plainly (whole GEMM, then one "
        "all-reduce) and overlapped (the output computed in groups of row blocks, each group's "
        "all-reduce in flight while the next group computes), on N local gloo processes. "
        "Prints per shape: GEMM alone, all-reduce alone, plain, overlapped, speedup = plain / "
        "overlapped, and the group sizes chosen. A shape MxNxK is M tokens, N output features "
        "and K = the rank's slice of the input features. On a machine with fewer cores than "
        "ranks the processes share cores (oversubscribed); the output says so."
    )
    parser.add_argument("--world-size", type=int, default=2, metavar="N",
                        help=f"number of processes (ranks), 2..{MAX_WORLD_SIZE} (default 2)")
    parser.add_argument("--shapes", type=parse_shapes, default=parse_shapes(DEFAULT_SHAPES),
                        metavar="MxNxK,...", help=f"comma-separated shapes (default {DEFAULT_SHAPES})")
    parser.add_argument("--repeats", type=_positive, default=7,
                        help="timed runs per measurement; the median is reported (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--tuner", choices=("exhaustive", "model"), default="exhaustive",
                        help="exhaustive: time every way to group the waves and keep the fastest; "
                             "model: pick by the cost model without timing (default exhaustive)")
    parser.add_argument("--max-waves", type=int, default=4, metavar="W",
                        help="cut M into at most W waves (exhaustive tries 2**(W-1) groupings; "
                             "default 4, valid 2..12)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before giving up (default 600)")
    parser.add_argument("--calibrate", action="store_true",
                        help="instead: measure the cost model's constants (GEMM flop/s, all-reduce "
                             "latency and bandwidth, per-call cost, contention) on the first shape "
                             "and print them, for engine/tensor_overlap/overlapped_linear.py")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def format_table(results: list[dict]) -> str:
    head = (f"{'M x N x K':>18} {'gemm ms':>9} {'allred ms':>9} {'plain ms':>9} {'overlap ms':>10} "
            f"{'speedup':>8}  groups (x rows/wave); model's pick")
    lines = [head, "-" * len(head)]
    for r in results:
        shape = f"{r['m']}x{r['n']}x{r['k']}"
        lines.append(f"{shape:>18} {r['gemm_ms']:9.2f} {r['all_reduce_ms']:9.2f} {r['plain_ms']:9.2f} "
                     f"{r['overlapped_ms']:10.2f} {r['speedup']:7.2f}x  {r['groups']} x {r['wave_rows']}; "
                     f"{r['model_groups']}")
    return "\n".join(lines)


def run(args: argparse.Namespace, extra=()) -> int:
    from engine.tensor_overlap.process_group import check_world_size
    from engine.tensor_overlap.wave_schedule import MAX_WAVES_LIMIT

    try:
        check_world_size(args.world_size)
    except ValueError as exc:
        print(f"semipd bench-overlap: --world-size: {exc}", file=sys.stderr)
        return 2
    if not 2 <= args.max_waves <= MAX_WAVES_LIMIT:
        print(f"semipd bench-overlap: --max-waves {args.max_waves} is out of range; valid: 2..{MAX_WAVES_LIMIT} "
              "(1 wave leaves nothing to overlap)", file=sys.stderr)
        return 2
    from engine.tensor_overlap.measure import benchmark, calibrate_cost_model

    if args.calibrate:
        m, n, k = args.shapes[0]
        try:
            constants = calibrate_cost_model(args.world_size, (m, n, k), args.repeats, timeout_s=args.timeout)
        except RuntimeError as exc:
            print(f"semipd bench-overlap: {exc}", file=sys.stderr)
            return 1
        print(json.dumps({"world_size": args.world_size, "shape": [m, n, k], **constants}, indent=2))
        return 0
    cores = len(os.sched_getaffinity(0))
    oversubscribed = args.world_size > cores
    load_before = os.getloadavg()[0]
    try:
        results = benchmark(args.world_size, args.shapes, args.repeats, args.warmup, args.tuner, args.max_waves,
                            timeout_s=args.timeout)
    except RuntimeError as exc:
        print(f"semipd bench-overlap: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"world_size": args.world_size, "backend": "gloo", "device": "cpu",
                          "cores": cores, "oversubscribed": oversubscribed, "threads_per_rank": 1,
                          "tuner": args.tuner, "repeats": args.repeats,
                          "load_average_1min": [load_before, os.getloadavg()[0]], "results": results}, indent=2))
        return 0
    print(f"gloo on CPU, world size {args.world_size}, 1 torch thread per rank, {cores} cores"
          + (f" (OVERSUBSCRIBED: {args.world_size} ranks share {cores} cores)" if oversubscribed else "")
          + f"; tuner {args.tuner}; median of {args.repeats}, slowest rank; 1-min load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other processes share the cores)")
    print(format_table(results))
    worst = max(r["max_abs_diff"] for r in results)
    print(f"max |overlapped - plain| over all shapes: {worst:.3g} (float32). speedup = plain / overlapped; "
          f"groups: the {args.tuner} tuner's choice among 2+ groups; model's pick: what the engine's "
          f"cost model would choose ([all waves] = do not split).")
    return 0
