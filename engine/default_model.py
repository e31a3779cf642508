"""The embedded default model: `tiny`, built once into the user's cache folder.

Building goes to a temporary folder renamed into place, under a file lock, so that concurrent
first runs (tests in parallel, several servers) neither race nor leave a half-written model.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_PRESET = "tiny"
DEFAULT_SEED = 0


def cache_dir() -> Path:
    root = os.environ.get("SEMIPD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "semipd")
    return Path(root)


def cached_model(preset: str, seed: int = DEFAULT_SEED) -> Path:
    """Path of a preset model in the cache, built on first use."""
    from engine.random_model import make_model

    target = cache_dir() / "models" / f"{preset}-seed{seed}"
    if (target / "semipd_model.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "semipd_model.json").is_file():
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                make_model(preset, tmp, seed)
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def embedded_default_model() -> Path:
    return cached_model(DEFAULT_PRESET, DEFAULT_SEED)
