"""Loader for fused_kernel.c: compiles it once per machine and calls it through ctypes.

The kernel reads K/V rows straight out of the paged pool (no gathered copies, no padding) and does
all math in float32. It is optional: ``load()`` returns None when no C compiler is available or
the build fails, and callers fall back to the pure-torch formulations.

Build: ``$CC`` (default ``cc``) -O3 -march=native -fopenmp-simd -shared -fPIC (about 1 s), into
``$SEMIPD_KERNEL_CACHE`` (default ~/.cache/semipd/decode_attention/), keyed by a hash of the source,
the flags, the compiler and the CPU's feature flags, written to a temp name and renamed so
concurrent processes are safe. ``$SEMIPD_KERNEL_CFLAGS`` adds flags (e.g. -DPREFETCH_AHEAD=12).
The kernel is single-threaded (no OpenMP runtime), whatever torch's thread count.
ctypes releases the GIL for the duration of the call.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

import torch

SOURCE = Path(__file__).resolve().parent / "fused_kernel.c"
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-shared", "-fPIC", "-lm"] + os.environ.get("SEMIPD_KERNEL_CFLAGS", "").split()
_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

_lock = threading.Lock()
_lib = None
_load_error: Optional[str] = None


def _cache_dir() -> Path:
    env = os.environ.get("SEMIPD_KERNEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "semipd" / "decode_attention"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _build() -> Path:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler ({cc!r} not found)")
    src = SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    # -march=native: the library is only valid for this CPU, so its features are part of the key
    key = hashlib.sha256(src + " ".join(FLAGS).encode() + version.encode() + _cpu_flags().encode()
                         ).hexdigest()[:16]
    out_dir = _cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"fused_decode_{key}.so"
    if target.exists():
        return target
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"kernel build failed: {proc.stderr.strip()[:2000]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load():
    """The compiled kernel (ctypes function), or None if it cannot be built here."""
    global _lib, _load_error
    with _lock:
        if _lib is not None or _load_error is not None:
            return _lib
        try:
            lib = ctypes.CDLL(str(_build()))
            fn = lib.semipd_decode_attention
            i64, i32, f32, vp = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
            fn.argtypes = [i32, vp, vp, i64, i64, i64, i64, vp, vp, vp,
                           i32, i32, i32, i32, i32, f32, f32, vp, vp, i32]
            fn.restype = i32
            _lib = fn
        except Exception as exc:  # no compiler, build error, unloadable library
            _load_error = f"{type(exc).__name__}: {exc}"
        return _lib


def load_error() -> Optional[str]:
    return _load_error


def fused_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    index: torch.Tensor,
    offsets: torch.Tensor,
    max_len: int,
    scaling: float,
    logit_cap: float,
    out_f32: torch.Tensor,
    scratch: torch.Tensor,
    force_generic: bool = False,
) -> torch.Tensor:
    """out_f32[B, H, Dv] = attention of q[B, H, D] (float32, contiguous) over the pool rows
    index[offsets[b]:offsets[b+1]] of k_cache [S, Hkv, D] / v_cache [S, Hkv, Dv] (read in place).
    ``scratch`` is float32 with at least scratch_elems(...) elements."""
    fn = load()
    if fn is None:
        raise RuntimeError(f"fused decode kernel unavailable: {_load_error}")
    b, h, d = q.shape
    hkv, dv = k_cache.shape[1], v_cache.shape[2]
    if k_cache.dtype not in _DTYPE_CODE or v_cache.dtype != k_cache.dtype:
        raise TypeError(f"unsupported pool dtype {k_cache.dtype}/{v_cache.dtype}")
    if k_cache.stride(2) != 1 or v_cache.stride(2) != 1:
        raise ValueError("pool rows must be contiguous in the head dimension")
    if not (q.dtype == torch.float32 and q.is_contiguous()):
        raise ValueError("q must be contiguous float32")
    if not (out_f32.dtype == torch.float32 and out_f32.is_contiguous()):
        raise ValueError("out must be contiguous float32")
    assert index.dtype == torch.int64 and index.is_contiguous()
    assert offsets.dtype == torch.int64 and offsets.is_contiguous() and offsets.numel() == b + 1
    assert scratch.numel() >= scratch_elems(max_len, h, hkv, d, dv)
    rc = fn(
        _DTYPE_CODE[k_cache.dtype], k_cache.data_ptr(), v_cache.data_ptr(),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        q.data_ptr(), index.data_ptr(), offsets.data_ptr(),
        b, hkv, h // hkv, d, dv, float(scaling), float(logit_cap),
        scratch.data_ptr(), out_f32.data_ptr(), int(force_generic),
    )
    if rc != 0:
        raise RuntimeError(f"fused decode kernel returned {rc}")
    return out_f32


def scratch_elems(max_len: int, h: int, hkv: int, d: int, dv: int) -> int:
    return max_len * h + max(d, dv) + h * dv + h * d
