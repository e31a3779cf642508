"""The servers the benchmarks compare, started the same way: stock SGLang, and semipd's modes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from engine.device_env import prepare_cpu_process_env
from engine.launch import sglang_argv
from stack.server_process import ServerProcess


def command(system: str, model: Path, port: int, *extra: str) -> tuple[list[str], dict]:
    """system: 'stock' (SGLang's own launcher, same flags and environment as semipd's defaults),
    'unified', 'semi-pd:P,D', or 'semi-pd:P,D+lend' (with --lend-idle-cores)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if system == "stock":  # SGLang's own attention on CPU (torch_native); our other defaults alike
        prepare_cpu_process_env(env)
        return [sys.executable, "-m", "sglang.launch_server",
                *sglang_argv(str(model), "127.0.0.1", port, "cpu", ["--attention-backend", "torch_native", *extra])], env
    mode, _, split = system.partition(":")
    split, lend, _ = split.partition("+lend")
    cmd = [sys.executable, "-m", "cli.main", "serve", "--model", str(model), "--port", str(port), "--mode", mode]
    cmd += (["--split", split] if split else []) + (["--lend-idle-cores"] if lend else [])
    return cmd + list(extra), env


def server(system: str, model: Path, port: int, log_dir: Path, *extra: str) -> ServerProcess:
    cmd, env = command(system, model, port, *extra)
    name = system.replace(":", "-").replace(",", "_").replace("+", "-")
    return ServerProcess(cmd, f"http://127.0.0.1:{port}", log_dir / f"{name}-{model.name}.log", env=env)
