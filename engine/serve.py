"""`semipd serve`: SGLang's HTTP server with safe defaults for this machine.

Everything SGLang's own `launch_server` accepts passes through unchanged; semipd adds only the
defaults a user would otherwise have to find out (an explicit KV budget, metrics on, the CPU
engine and its kernel stand-in when there is no GPU) and the choice of mode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HELP = "start an SGLang-compatible server (unified or semi-PD mode)"
PASSTHROUGH = True
MODES = ("unified", "semi-pd")

# Share of free memory the KV pool may take when the user gives no --max-total-tokens.
KV_MEMORY_FRACTION = 0.10
KV_TOKENS_MAX = 262_144


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
    parser.add_argument("--split", default="1,1", metavar="P,D",
                        help="semi-pd only: compute shares of the prefill and decode workers; on "
                             "CPU a number of cores each (may overlap), default 1,1; changed live "
                             "with POST /semipd/split")
    parser.add_argument("--lend-idle-cores", action="store_true",
                        help="semi-pd on CPU: a worker that will be idle during the other's next "
                             "step lends it its cores for that step")
    parser.add_argument("--tp-overlap", nargs="?", const="auto", metavar="GROUPS",
                        help="with --tp-size > 1: overlap each o_proj / down_proj GEMM with its "
                             "all-reduce, group of output rows by group; GROUPS is 'auto' (tuned per "
                             "shape, the default when the flag is given bare) or a fixed group count "
                             "(see docs/tensor-overlap.md)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=30000, help="port (default 30000)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="default: cuda when a GPU is present, else cpu")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the SGLang arguments and exit without starting")
    parser.add_argument("--sglang-help", action="store_true",
                        help="show every SGLang server flag and exit")


def _has_flag(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def kv_bytes_per_token(config: dict, dtype_bytes: int = 4) -> int:
    heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * heads * head_dim * dtype_bytes


def available_memory_bytes() -> int:
    import psutil

    return psutil.virtual_memory().available


def default_max_total_tokens(model_path: str | Path, free_bytes: int) -> int:
    """KV tokens that fit in KV_MEMORY_FRACTION of free memory (float32, to be safe)."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    context = config.get("max_position_embeddings", 4096)
    tokens = int(free_bytes * KV_MEMORY_FRACTION) // kv_bytes_per_token(config)
    return max(min(tokens, KV_TOKENS_MAX), min(context, KV_TOKENS_MAX))


def sglang_argv(model: str, host: str, port: int, device: str, passthrough: list[str]) -> list[str]:
    """SGLang launch_server arguments: semipd's defaults, then the user's flags (which win)."""
    argv = ["--model-path", model, "--host", host, "--port", str(port), "--device", device]
    from policies.observation import LATENCY_BUCKETS_S  # a shared API constant: the tuner reads these

    buckets = [str(b) for b in LATENCY_BUCKETS_S]
    defaults: list[tuple[str, list[str]]] = [
        ("--enable-metrics", []),
        # finer TTFT/TPOT histograms than SGLang's (0.1, 0.2, 0.4, ... s): windowed percentiles
        # near tight SLOs are what the tuner decides on
        ("--bucket-time-to-first-token", buckets),
        ("--bucket-inter-token-latency", buckets),
        ("--max-total-tokens", [str(default_max_total_tokens(model, available_memory_bytes()))]),
    ]
    if device == "cpu":
        # SGLang's "auto" serves a float32 checkpoint in float16, which on CPUs without AMX-FP16 is
        # ~20x slower than bfloat16 (measured: a 512x512x1536 matmul, 24 ms vs 1.1 ms).
        defaults.append(("--dtype", ["bfloat16"]))
    for flag, value in defaults:
        if not _has_flag(passthrough, flag):
            argv += [flag, *value]
    return argv + passthrough


def curl_example(host: str, port: int) -> str:
    body = json.dumps({"text": "Hello", "sampling_params": {"max_new_tokens": 16, "temperature": 0}})
    return f"curl -s http://{host}:{port}/generate -H 'Content-Type: application/json' -d '{body}'"


def run(args: argparse.Namespace, passthrough: list[str]) -> int:
    from engine.platform import detect_device, prepare_cpu_process_env

    device = args.device or detect_device()
    if device == "cpu":
        prepare_cpu_process_env()
        from engine.tensor_overlap.cpu_tp import prepare_cpu_tp_env

        prepare_cpu_tp_env(passthrough)  # SGLang's CPU engine needs two settings for --tp-size > 1
    if args.tp_overlap is not None:
        from engine.tensor_overlap import sglang_patch

        from engine.tensor_overlap.cpu_tp import tp_size_from_args

        try:
            sglang_patch.configure(args.tp_overlap)
        except ValueError as exc:
            print(f"semipd serve: --tp-overlap: {exc}", file=sys.stderr)
            return 2
        if tp_size_from_args(passthrough) < 2:
            print("semipd serve: note: --tp-overlap has no effect without --tp-size 2 or more", file=sys.stderr)
    if args.sglang_help:
        from sglang.srt.server_args import prepare_server_args

        prepare_server_args(["--help"])
        return 0

    control_endpoint = None
    if args.mode == "semi-pd":
        from engine import semipd_mode
        from engine.partition import InvalidSplit

        if device != "cpu":
            print("semipd serve: semi-pd mode on GPU is not available yet (see README: GPU partition "
                  "backends)", file=sys.stderr)
            return 2
        try:
            control_endpoint = semipd_mode.configure(args.split, args.port, args.lend_idle_cores)
        except InvalidSplit as exc:
            print(f"semipd serve: --split: {exc}", file=sys.stderr)
            return 2
        passthrough = [*passthrough, "--disable-overlap-schedule"]
    model = args.model
    if model is None:
        from engine.model_cache import embedded_default_model

        model = str(embedded_default_model())
    elif not (Path(model) / "config.json").is_file():
        print(f"semipd serve: --model {model!r} is not a model folder (no config.json)", file=sys.stderr)
        return 2

    argv = sglang_argv(model, args.host, args.port, device, passthrough)
    if args.dry_run:
        print(" ".join(["python", "-m", "sglang.launch_server", *argv]))
        return 0

    from sglang.launch_server import run_server
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    from engine import http_api
    from sglang.srt.entrypoints.http_server import app

    load_plugins()
    server_args = prepare_server_args(argv)
    http_api.install(app, {server_args.served_model_name or model, model})
    scheduler_func = None
    if control_endpoint:
        http_api.install_semipd_routes(app, control_endpoint)
        scheduler_func = semipd_mode.run_semipd_scheduler_process
    if args.tp_overlap is not None:
        scheduler_func = sglang_patch.with_overlap(scheduler_func)
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host

    def announce() -> None:
        print(f"\nsemipd: serving {model} ({args.mode} mode, {device}) at http://{shown_host}:{args.port}\n"
              f"Try:\n  {curl_example(shown_host, args.port)}\n", flush=True)

    try:
        _run_with_hooks(run_server, server_args, announce, scheduler_func)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)
        if control_endpoint:
            semipd_mode.remove_endpoint(control_endpoint)
    return 0


def _run_with_hooks(run_server, server_args, callback, scheduler_func) -> None:
    """run_server takes no callback or scheduler function; pass ours to http_server.launch_server."""
    import sglang.srt.entrypoints.http_server as http_server

    original = http_server.launch_server

    def launch_with_callback(server_args, *a, **kw):
        kw.setdefault("launch_callback", callback)
        if scheduler_func is not None:
            kw.setdefault("run_scheduler_process_func", scheduler_func)
        return original(server_args, *a, **kw)

    http_server.launch_server = launch_with_callback
    try:
        run_server(server_args)
    finally:
        http_server.launch_server = original
