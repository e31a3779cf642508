"""A torch-only probe of what GPU semi-PD relies on (no SGLang needed): `semipd doctor --gpu` runs
it first, and `python -m engine.gpu_probe` runs it alone.

- CUDA IPC: a worker process opens the owner's tensors from a manifest (engine/semipd/
  cuda_ipc_storage.py), writes into them, and the owner sees the write.
- Green contexts: two contexts of P and SMs - P SMs each run a compute-bound loop alone, then both
  at once; if they are disjoint, running together costs each little (the ratio is printed).
- Switch latency: handing work over from one green-context stream to another (an event recorded
  on the old, waited on by the new) and running a small kernel there.
- Interprocess events (what orders the two processes' steps and moves): a worker reads a flag the
  owner sets after a long computation, once without waiting (it should still be unset) and once
  after its stream waited on the owner's interprocess event (it must be set).

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


EVENT_WORKER = """
import sys, torch
from engine.semipd.cuda_ipc_storage import attach, loads
manifest, handle = loads(sys.stdin.buffer.read(int(sys.argv[1])))
flag = attach(manifest, [("flag", (1,), torch.int32)])["flag"]
event = torch.cuda.Event.from_ipc_handle(torch.cuda.current_device(), handle)
print("ready", flush=True)
sys.stdin.readline()  # the owner has queued its long work, the flag's write and the event's record
before = flag.clone()
torch.cuda.current_stream().wait_event(event)
after = flag.clone()
torch.cuda.synchronize()
print(int(before.item()), int(after.item()), flush=True)
"""


def interprocess_events() -> str:
    from engine.semipd.cuda_ipc_storage import dumps, export_manifest

    flag = torch.zeros(1, dtype=torch.int32, device="cuda")
    event = torch.cuda.Event(interprocess=True)
    data = dumps((export_manifest([("flag", flag)]), event.ipc_handle()))
    worker = subprocess.Popen([sys.executable, "-c", EVENT_WORKER, str(len(data))], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        worker.stdin.write(data)
        worker.stdin.flush()
        if worker.stdout.readline().strip() != b"ready":
            return f"FAIL interprocess events: the worker did not start: {worker.stderr.read().decode()[-500:]}"
        a = torch.randn(4096, 4096, device="cuda")
        for _ in range(100):  # long enough (hundreds of ms) for the worker's first read to come first
            a = (a @ a) / 4096
        flag.fill_(1)
        event.record()
        worker.stdin.write(b"go\n")
        worker.stdin.flush()
        before, after = (int(v) for v in worker.stdout.readline().split())
    except (ValueError, OSError) as exc:
        return f"FAIL interprocess events: {exc}: {worker.stderr.read().decode()[-500:]}"
    finally:
        worker.kill()
    if after != 1:
        return "FAIL interprocess events: the worker's stream waited on the owner's event and still read the old value"
    first = ("without waiting it read it unset, so the wait is what ordered it" if before == 0 else
             "inconclusive: the owner's work was done before the worker's first read")
    return f"ok   interprocess events: after waiting on the owner's event the worker read the flag set; {first}"


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
    return True, [*lines, ipc_sharing(), interprocess_events(), *green_contexts()]


if __name__ == "__main__":
    found, report = probe()
    print("\n".join(report))
    sys.exit(0 if found and not any(line.startswith("FAIL") for line in report) else 1)
