"""`semipd doctor`: check that semi-PD works on this machine (stack/doctor.py, engine/gpu_probe.py)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HELP = "check that semi-PD works on this machine (greedy output, one KV pool, splits, re-partitions)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Start a unified and a semi-pd engine on a small random-weight model and check: the same "
        "greedy output; one KV pool; the split acting on compute; re-partitions under load with no "
        "request failed. With --gpu, a torch-only probe of CUDA IPC, green contexts and switch "
        "latency runs first, and the engines run on the GPU: semi-pd on SGLang's PD multiplexing, or "
        "with --storage ipc the two processes (under MPS, or --gpu-partition green-contexts). Takes a "
        "few minutes.")
    parser.add_argument("--gpu", action="store_true", help="check the GPU (default: this machine's CPU)")
    parser.add_argument("--probe-only", action="store_true", help="with --gpu: the torch-only probe alone")
    parser.add_argument("--model", metavar="PATH", help="model folder (default: the embedded tiny model)")
    parser.add_argument("--requests", type=int, default=100, help="requests in the re-partition check (default 100)")
    parser.add_argument("--repartitions", type=int, default=20, help="splits set during that load (default 20)")
    parser.add_argument("--log-dir", metavar="DIR", help="where the engines' logs go (default: a temporary folder)")
    parser.add_argument("--storage", choices=("files", "ipc"),
                        help="the semi-pd engine's storage (semipd serve --storage): on CPU files (default) or "
                             "ipc; on a GPU ipc checks the two-process engine instead of SGLang's PD multiplexing")
    parser.add_argument("--gpu-partition", choices=("mps", "green-contexts"),
                        help="with --gpu --storage ipc: how the SMs are shared out (semipd serve --gpu-partition; "
                             "default mps, which needs the MPS daemon; green-contexts runs both engines with "
                             "--disable-cuda-graph)")


def run(args: argparse.Namespace, passthrough=()) -> int:
    for name in ("requests", "repartitions"):
        if getattr(args, name) < 1:
            print(f"semipd doctor: --{name} {getattr(args, name)}: must be 1 or more", file=sys.stderr)
            return 2
    if args.probe_only and not args.gpu:
        print("semipd doctor: --probe-only goes with --gpu (the probe is of the GPU)", file=sys.stderr)
        return 2
    if args.gpu_partition and not (args.gpu and args.storage == "ipc"):
        print("semipd doctor: --gpu-partition goes with --gpu --storage ipc (the two-process engine on a GPU)",
              file=sys.stderr)
        return 2
    if args.gpu:
        from engine.gpu_probe import probe

        found, report = probe()
        print("\n".join(report))
        if not found or args.probe_only:
            return 0 if found and not any(line.startswith("FAIL") for line in report) else 1
    from engine.default_model import embedded_default_model
    from stack.doctor import engine_checks

    model = Path(args.model) if args.model else embedded_default_model()
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="semipd-doctor-"))
    semipd_flags = [*(["--storage", args.storage] if args.storage else []),
                    *(["--gpu-partition", args.gpu_partition] if args.gpu_partition else [])]
    sglang_flags = ["--disable-cuda-graph"] if args.gpu_partition == "green-contexts" else []
    checks = engine_checks(model, "cuda" if args.gpu else "cpu", log_dir, args.requests, args.repartitions,
                           semipd_flags=tuple(semipd_flags), sglang_flags=tuple(sglang_flags))
    judged = [c for c in checks if c.ok is not None]
    failed = [c for c in judged if not c.ok]
    print(f"\n{len(judged) - len(failed)} of {len(judged)} checks passed" + (f"; logs in {log_dir}" if failed else ""))
    return 1 if failed else 0
