"""Starting SGLang's HTTP server the semipd way: safe defaults for this machine, the mode, our hooks.

Everything SGLang's own `launch_server` accepts passes through unchanged; semipd adds only the
defaults a user would otherwise have to find out (an explicit KV budget, metrics on, the CPU
engine and its kernel stand-in when there is no GPU) and, in semi-pd mode, its scheduler
process. `semipd serve` (cli/serve.py) parses the flags and calls `start`.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from contract import LATENCY_BUCKETS_S
from engine.attention import BACKEND_NAME
from engine.device_env import prepare_cpu_process_env
from engine.tensor_overlap.cpu_tp import prepare_cpu_tp_env

# Share of free memory the KV pool may take when the user gives no --max-total-tokens.
KV_MEMORY_FRACTION = 0.10
KV_TOKENS_MAX = 262_144


KEY_FLAGS = ("--admin-api-key", "--api-key")  # SGLang's: the admin routes need one of them once set


def _has_flag(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def flag_value(args: list[str], flag: str) -> str | None:
    """The value of `flag` in `args` (`--flag V` or `--flag=V`; the last one wins), or None."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def with_admin_key(passthrough: list[str], env_key: str | None) -> tuple[list[str], str | None]:
    """(passthrough with the admin key from the environment added unless a flag gives one, the key
    that guards the admin routes: the admin key, else SGLang's --api-key, else None)."""
    if env_key and not _has_flag(passthrough, "--admin-api-key"):
        passthrough = [*passthrough, "--admin-api-key", env_key]
    return passthrough, next(filter(None, (flag_value(passthrough, f) for f in KEY_FLAGS)), None)


def shown_argv(argv: list[str]) -> list[str]:
    """`argv` with key values masked, for printing."""
    shown = list(argv)
    for i, arg in enumerate(shown):
        if arg in KEY_FLAGS and i + 1 < len(shown):
            shown[i + 1] = "***"
        elif arg.split("=", 1)[0] in KEY_FLAGS and "=" in arg:
            shown[i] = arg.split("=", 1)[0] + "=***"
    return shown


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
        # torch_native's prefill with a batched decode attention (engine/attention/); SGLang's own
        # CPU default, torch_native, loops over the sequences of every decode step in Python.
        defaults.append(("--attention-backend", [BACKEND_NAME]))
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


def run_scheduler_process(*args, semipd: bool = False, tp_overlap: bool = False, **kwargs):
    """SGLang's scheduler-process entry (in the spawned process): our attention backend
    registered, the tensor-overlap hooks installed when asked, and in semi-pd mode our scheduler."""
    from engine.attention import backend
    from engine.sglang_seams import run_scheduler_process_as

    backend.register()
    if tp_overlap:
        from engine.tensor_overlap import sglang_patch

        sglang_patch.install()
    if semipd:
        from engine.semipd.settings import semipd_scheduler_class

        return run_scheduler_process_as(semipd_scheduler_class(), *args, **kwargs)
    from sglang.srt.managers.scheduler import run_scheduler_process as stock

    return stock(*args, **kwargs)


def start(model: str, argv: list[str], announce, control_endpoint: str | None, tp_overlap: bool,
          max_body_bytes: int) -> None:
    """Run SGLang's server until it stops: our routes on its app, our scheduler-process entry,
    `announce` once it serves."""
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    from engine import http_routes
    from engine.attention import backend
    from engine.semipd import settings
    from engine.sglang_seams import http_app, run_server_with

    load_plugins()
    backend.register()  # before the flags are parsed: --attention-backend semipd_cpu is valid
    server_args = prepare_server_args(argv)
    app = http_app()
    config = Path(model) / "config.json"
    vocab_size = json.loads(config.read_text()).get("vocab_size") if config.is_file() else None
    http_routes.install(app, {server_args.served_model_name or model, model}, vocab_size, max_body_bytes)
    if control_endpoint:
        http_routes.install_semipd_routes(app, control_endpoint)
    entry = functools.partial(run_scheduler_process, semipd=bool(control_endpoint), tp_overlap=tp_overlap)
    try:
        run_server_with(server_args, announce, entry)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)
        if control_endpoint:
            settings.remove_endpoint(control_endpoint)
