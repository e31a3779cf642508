"""Starting SGLang's HTTP server the semipd way: safe defaults for this machine, the mode, our hooks.

Everything SGLang's own `launch_server` accepts passes through unchanged; semipd adds only the
defaults a user would otherwise have to find out (an explicit KV budget, metrics on, the CPU
engine and its kernel stand-in when there is no GPU) and, in semi-pd mode, its scheduler
process. `semipd serve` (cli/serve.py) parses the flags and calls `start`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from contract import LATENCY_BUCKETS_S
from engine.device_env import prepare_cpu_process_env
from engine.tensor_overlap.cpu_tp import prepare_cpu_tp_env

# Share of free memory the KV pool may take when the user gives no --max-total-tokens.
KV_MEMORY_FRACTION = 0.10
KV_TOKENS_MAX = 262_144


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


def prepare_device(device: str, passthrough: list[str]) -> None:
    """On CPU: SGLang's CPU engine, our sgl_kernel stand-in, and what --tp-size > 1 needs there."""
    if device == "cpu":
        prepare_cpu_process_env()
        prepare_cpu_tp_env(passthrough)


def print_sglang_help() -> None:
    from sglang.srt.server_args import prepare_server_args

    prepare_server_args(["--help"])


def curl_example(host: str, port: int) -> str:
    body = json.dumps({"text": "Hello", "sampling_params": {"max_new_tokens": 16, "temperature": 0}})
    return f"curl -s http://{host}:{port}/generate -H 'Content-Type: application/json' -d '{body}'"




def start(model: str, argv: list[str], announce, control_endpoint: str | None, tp_overlap: bool) -> None:
    """Run SGLang's server until it stops: our routes on its app, our scheduler entry in semi-pd
    mode (or with --tp-overlap), `announce` once it serves."""
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    from engine import http_routes
    from engine.semipd import settings
    from engine.sglang_seams import http_app, run_server_with
    from engine.tensor_overlap import sglang_patch

    load_plugins()
    server_args = prepare_server_args(argv)
    app = http_app()
    http_routes.install(app, {server_args.served_model_name or model, model})
    scheduler_func = None
    if control_endpoint:
        http_routes.install_semipd_routes(app, control_endpoint)
        scheduler_func = settings.run_semipd_scheduler_process
    if tp_overlap:
        scheduler_func = sglang_patch.with_overlap(scheduler_func)
    try:
        run_server_with(server_args, announce, scheduler_func)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)
        if control_endpoint:
            settings.remove_endpoint(control_endpoint)
