"""`semipd serve`: SGLang's HTTP server, unified or semi-PD, with safe defaults for this machine."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "start an SGLang-compatible server (unified or semi-PD mode)"
PASSTHROUGH = True
MODES = ("unified", "semi-pd")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Start an SGLang server. Any `python -m sglang.launch_server` flag passes through "
        "(see --sglang-help); semipd fills in safe defaults for this machine."
    )
    parser.add_argument("--model", metavar="PATH",
                        help="Hugging Face model folder (default: the embedded tiny model, built "
                             "once into the cache)")
    parser.add_argument("--mode", choices=MODES, default="unified",
                        help="unified: stock SGLang scheduling (default); semi-pd: prefill and "
                             "decode workers on separate compute partitions over shared storage")
    parser.add_argument("--split", metavar="P,D",
                        help="semi-pd only: compute shares of prefill and decode; on CPU a number of "
                             "cores each (may overlap), default 1,1; on GPU streaming multiprocessors, "
                             "one of the menu of SM splits built at start (GET /semipd/split lists it), "
                             "default its most even (with --storage ipc: percent of SMs, P,100, default "
                             "50,100; with --gpu-partition green-contexts SM counts P,D making up the GPU, "
                             "default the most even); changed live with POST /semipd/split")
    parser.add_argument("--frontend-cores", choices=("prefill", "decode", "all"), default="all",
                        help="semi-pd on CPU: where SGLang's HTTP/tokenizer and detokenizer processes run: "
                             "on all cores (default), the prefill worker's, or decode's")
    parser.add_argument("--lend-idle-cores", action="store_true",
                        help="semi-pd on CPU: a worker that will be idle during the other's next "
                             "step lends it its cores for that step")
    parser.add_argument("--prefill-pipeline", type=int, choices=(1, 2), default=2, metavar="{1,2}",
                        help="semi-pd on CPU: batches the prefill worker may hold; 2 (default) hands it the next "
                             "batch while it runs one, 1 waits for the owner's next loop (for comparison)")
    parser.add_argument("--repartition", choices=("live", "standby"), default="live",
                        help="semi-pd: how a new split reaches the prefill worker: live (default; on CPU its "
                             "cores and threads change at once) or standby (a new worker is started on the new "
                             "share and swapped in at a batch boundary, as MPS needs: a process's SM share is "
                             "fixed when it starts)")
    parser.add_argument("--storage", choices=("files", "ipc"), default="files",
                        help="semi-pd: how the two workers share weights, KV cache and request table: files "
                             "(default on CPU: shared files) or ipc (torch's IPC; the prefill worker reads no "
                             "weights and takes the owner's pool sizes). On a GPU, ipc runs the paper's two "
                             "processes over CUDA IPC with MPS shares (--split P,100: decode keeps every SM, a "
                             "new P starts a standby worker; needs the MPS daemon; not verified on hardware) "
                             "instead of SGLang's PD multiplexing")
    parser.add_argument("--gpu-partition", choices=("mps", "green-contexts"), default="mps",
                        help="semi-pd with --storage ipc on a GPU: how the SMs are shared out: mps (default, the "
                             "paper's: decode keeps every SM, prefill's percentage is set when its worker starts) "
                             "or green-contexts (disjoint SM counts, both workers moved live at a batch boundary; "
                             "needs --disable-cuda-graph). Not verified on hardware")
    parser.add_argument("--max-body-mb", type=float, default=64.0, metavar="MB",
                        help="largest request body accepted, in MiB; larger ones get a 413 (default 64; "
                             "1 to 4096)")
    parser.add_argument("--prefill-timeout", type=float, default=60.0, metavar="S",
                        help="semi-pd on CPU: a prefill worker that holds a batch this long without answering "
                             "(stopped, deadlocked) is killed and replaced, its batches prefilled by the decode "
                             "worker (default 60; 0.5 to 3600)")
    parser.add_argument("--tp-overlap", nargs="?", const="auto", metavar="GROUPS",
                        help="with --tp-size > 1: overlap each o_proj / down_proj GEMM with its "
                             "all-reduce, group of output rows by group; GROUPS is 'auto' (tuned per "
                             "shape, the default when the flag is given bare) or a fixed group count "
                             "(see docs/tensor-overlap.md)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1); beyond loopback an admin key is required: "
                             "SEMIPD_ADMIN_KEY in the environment, or SGLang's --admin-api-key")
    parser.add_argument("--port", type=int, default=30000, help="port (default 30000)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="default: cuda when a GPU is present, else cpu")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the SGLang arguments and exit without starting")
    parser.add_argument("--sglang-help", action="store_true",
                        help="show every SGLang server flag and exit")


def run(args: argparse.Namespace, passthrough: list[str]) -> int:
    from contract.access import ADMIN_KEY_ENV, check_exposure
    from engine import launch
    from engine.device_env import detect_device
    from engine.partition import InvalidSplit
    from engine.semipd import settings
    from engine.tensor_overlap import sglang_patch
    from engine.tensor_overlap.cpu_tp import tp_size_from_args

    passthrough, key = launch.with_admin_key(passthrough, os.environ.get(ADMIN_KEY_ENV))
    try:
        check_exposure(args.host, key, "the engine", f"set {ADMIN_KEY_ENV} (or --admin-api-key KEY)")
        if not 1 <= args.max_body_mb <= 4096:
            raise ValueError(f"--max-body-mb {args.max_body_mb} is out of range 1..4096")
    except ValueError as exc:
        print(f"semipd serve: {exc}", file=sys.stderr)
        return 2
    device = args.device or detect_device()
    launch.prepare_device(device, passthrough)
    if args.tp_overlap is not None:
        try:
            sglang_patch.configure(args.tp_overlap)
        except ValueError as exc:
            print(f"semipd serve: --tp-overlap: {exc}", file=sys.stderr)
            return 2
        if tp_size_from_args(passthrough) < 2:
            print("semipd serve: note: --tp-overlap has no effect without --tp-size 2 or more", file=sys.stderr)
    if args.sglang_help:
        launch.print_sglang_help()
        return 0

    control_endpoint = None
    if args.mode == "semi-pd":
        try:
            control_endpoint = settings.configure(args.split, args.port, args.lend_idle_cores, args.frontend_cores,
                                                  args.prefill_pipeline, args.repartition, device,
                                                  args.prefill_timeout, args.storage, args.gpu_partition)
            # GPU: SGLang's PD multiplexing, its stream group chosen by the split in force; or with
            # --storage ipc the two processes, their storage shared through CUDA IPC
            passthrough = (settings.two_process_argv(passthrough, device, args.gpu_partition)
                           if device == "cpu" or args.storage == "ipc" else settings.pdmux_argv(passthrough))
        except InvalidSplit as exc:
            print(f"semipd serve: --split: {exc}", file=sys.stderr)
            return 2
        except ValueError as exc:
            print(f"semipd serve: {exc}", file=sys.stderr)
            return 2
    model = args.model
    if model is None:
        from engine.default_model import embedded_default_model

        model = str(embedded_default_model())
    elif not (Path(model) / "config.json").is_file():
        print(f"semipd serve: --model {model!r} is not a model folder (no config.json)", file=sys.stderr)
        return 2

    argv = launch.sglang_argv(model, args.host, args.port, device, passthrough)
    if args.dry_run:
        print(" ".join(["python", "-m", "sglang.launch_server", *launch.shown_argv(argv)]))
        return 0
    from engine.sglang_seams import SeamChanged, check_seams

    try:
        for warning in check_seams():
            print(f"semipd serve: warning: {warning}", file=sys.stderr)
    except SeamChanged as exc:
        print(f"semipd serve: {exc}", file=sys.stderr)
        return 2
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host

    def announce() -> None:
        print(f"\nsemipd: serving {model} ({args.mode} mode, {device}) at http://{shown_host}:{args.port}\n"
              f"Try:\n  {launch.curl_example(shown_host, args.port)}\n", flush=True)

    launch.start(model, argv, announce, control_endpoint, args.tp_overlap is not None, int(args.max_body_mb * 2**20))
    return 0
