"""A torch-only probe of what GPU semi-PD relies on (no SGLang needed): `semipd doctor --gpu` runs
it first, and `python -m engine.gpu_probe` runs it alone.

- CUDA IPC: a worker process opens the owner's tensors from a manifest (engine/semipd/
  cuda_ipc_storage.py), writes into them, and the owner sees the write.
- Green contexts: two contexts of P and SMs - P SMs each run a compute-bound loop alone, then both
  at once; if they are disjoint, running together costs each little (the ratio is printed).
- Switch latency: handing work over from one green-context stream to another (an event recorded
  on the old, waited on by the new) and running a small kernel there.

Not verified on hardware: written for the day a GPU is lent. Every step that cannot run says why.
"""

from __future__ import annotations

import subprocess
import sys
import time

import torch

WORKER = """
import sys, torch
from engine.semipd.cuda_ipc_storage import attach, loads
manifest = loads(sys.stdin.buffer.read())
kv = attach(manifest, [("kv", (1024, 1024), torch.float32)])["kv"]
kv[7].fill_(3.0)
torch.cuda.synchronize()
"""


def ipc_sharing() -> str:
    from engine.semipd.cuda_ipc_storage import dumps, export_manifest

    kv = torch.zeros(1024, 1024, device="cuda")
    done = subprocess.run([sys.executable, "-c", WORKER], input=dumps(export_manifest([("kv", kv)])),
                          capture_output=True, timeout=120)
    if done.returncode != 0:
        return f"FAIL CUDA IPC: the worker could not open the owner's tensor: {done.stderr.decode()[-500:]}"
    torch.cuda.synchronize()
    seen = bool(torch.all(kv[7] == 3.0)) and bool(torch.all(kv[6] == 0))
    return f"{'ok  ' if seen else 'FAIL'} CUDA IPC: a worker's write into the owner's tensor {'is' if seen else 'is not'} seen in place"


def _timed(work: list[tuple[object, torch.Tensor]], iterations: int = 50) -> float:
    """Seconds to run a compute-bound loop on each (stream, matrix) at once."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for stream, a in work:
        with torch.cuda.stream(stream):
            for _ in range(iterations):
                a = a @ a
                a = a / a.norm()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def green_contexts() -> list[str]:
    try:
        from torch.cuda.green_contexts import GreenContext
    except ImportError as exc:
        return [f"skip green contexts: this torch has none ({exc})"]
    props = torch.cuda.get_device_properties(0)
    half = props.multi_processor_count // 2 // 8 * 8
    try:
        contexts = [GreenContext.create(num_sms=n, device_id=0) for n in (half, props.multi_processor_count - half)]
        streams = [c.Stream() for c in contexts]
    except Exception as exc:  # a driver or torch without green-context support
        return [f"skip green contexts: {type(exc).__name__}: {exc}"]
    a = torch.randn(2048, 2048, device="cuda")
    alone = [_timed([(s, a.clone())]) for s in streams]
    together = _timed([(s, a.clone()) for s in streams])
    event = torch.cuda.Event()
    torch.cuda.synchronize()
    started = time.perf_counter()
    event.record(streams[0])
    streams[1].wait_event(event)
    with torch.cuda.stream(streams[1]):
        a.add_(0)
    torch.cuda.synchronize()
    switch_ms = (time.perf_counter() - started) * 1e3
    return [f"info green contexts of {half} and {props.multi_processor_count - half} SMs: alone "
            f"{alone[0] * 1e3:.1f} / {alone[1] * 1e3:.1f} ms, together {together * 1e3:.1f} ms "
            f"({together / max(alone):.2f}x the slower alone; about 1x when disjoint, 2x when shared)",
            f"info switch between their streams with an event hand-over and one small kernel: {switch_ms:.3f} ms"]


def probe() -> tuple[bool, list[str]]:
    """(whether CUDA is there, the report's lines)."""
    if not torch.cuda.is_available():
        return False, ["FAIL no CUDA device visible to torch: the GPU probe needs one"]
    props = torch.cuda.get_device_properties(0)
    lines = [f"info {props.name}: {props.multi_processor_count} SMs, compute capability {props.major}.{props.minor}, "
             f"torch {torch.__version__}"]
    return True, [*lines, ipc_sharing(), *green_contexts()]


if __name__ == "__main__":
    found, report = probe()
    print("\n".join(report))
    sys.exit(0 if found and not any(line.startswith("FAIL") for line in report) else 1)
