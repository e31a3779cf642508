"""Which device the engine runs on, and the process environment SGLang needs there.

On CPU, SGLang wants `SGLANG_USE_CPU_ENGINE=1` and an importable `sgl_kernel`; semipd puts its
own stand-in first on the import path of this process and, through PYTHONPATH, of every
process SGLang spawns (the scheduler and detokenizer start with the `spawn` method).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

STAND_IN_DIR = Path(__file__).resolve().parent / "cpu_stand_in"


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def detect_device(requested: str | None = None) -> str:
    """'cuda' when asked for or present, else 'cpu'."""
    if requested:
        if requested not in ("cpu", "cuda"):
            raise ValueError(f"--device {requested!r} is not supported; valid: cpu, cuda")
        return requested
    return "cuda" if gpu_available() else "cpu"


def prepare_cpu_process_env(environ=os.environ) -> None:
    """Switch SGLang to its CPU engine and put the sgl_kernel stand-in first on the path."""
    environ["SGLANG_USE_CPU_ENGINE"] = "1"
    stand_in = str(STAND_IN_DIR)
    paths = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if stand_in not in paths:
        environ["PYTHONPATH"] = os.pathsep.join([stand_in, *paths])
    if environ is os.environ and stand_in not in sys.path:
        sys.path.insert(0, stand_in)
        # A real sgl_kernel that failed to import earlier must not shadow the stand-in.
        sys.modules.pop("sgl_kernel", None)
