"""The prefill worker: a process that runs prefill forward passes over the owner's storage.

The decode worker (SGLang's scheduler process, the single owner of the radix tree, the KV
allocator and the request table) forms each prefill batch, allocates its KV slots, and sends the
batch's `ForwardBatch` here. This process runs the model on it, writing K and V straight into the
shared pool, and returns only the logits; the owner samples, streams and merges the requests into
its decode batch. Nothing is copied at the hand-off, and allocation has one owner.

This process is a stock SGLang `Scheduler` (so the model, pools and attention backend are built
by SGLang's own code) whose pools and weights are mapped onto the owner's shared files, and whose
event loop is replaced by `serve_forwards`. Its SGLang IPC sockets get fresh private names, so it
never sees requests from the tokenizer.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
import traceback
from dataclasses import dataclass

import zmq

logger = logging.getLogger(__name__)


@dataclass
class ForwardRequest:
    seq: int
    forward_batch: object  # sglang ForwardBatch, without its sampling state


@dataclass
class ForwardResult:
    seq: int
    logits_output: object | None
    started: float  # wall-clock times, comparable with the owner's records
    finished: float
    error: str | None = None


@dataclass
class SetThreads:
    threads: int


def send(sock: zmq.Socket, message) -> None:
    sock.send(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def recv(sock: zmq.Socket):
    return pickle.loads(sock.recv())


def run_prefill_worker(server_args, storage_dir: str, endpoint: str, threads: int) -> None:
    """Entry point of the prefill worker process (started with `spawn` by the owner)."""
    import tempfile

    # SGLang's scheduler metrics of this process would shadow the owner's (same labels): keep
    # them out of the directory that /metrics reads.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="semipd-prefill-metrics-")
    import torch
    from sglang.srt.managers import scheduler as scheduler_module
    from sglang.srt.runtime_context import SpawnRanks, publish
    from sglang.srt.server_args import PortArgs

    from engine.semipd.shared_storage import SharedStorage

    torch.set_num_threads(threads)
    publish(server_args, role="scheduler", ranks=SpawnRanks(world_rank=0, dp_rank=None, gpu_id=0))
    scheduler_module.configure_scheduler_process(server_args, 0)
    storage = SharedStorage.attach(storage_dir)
    sock = zmq.Context.instance().socket(zmq.PAIR)
    sock.connect(endpoint)
    try:
        scheduler = build_attached_scheduler(scheduler_module.Scheduler, server_args,
                                             PortArgs.init_new(server_args), storage)
    except Exception:
        send(sock, ForwardResult(-1, None, 0.0, 0.0, error=traceback.format_exc()))
        raise
    send(sock, ForwardResult(-1, None, 0.0, 0.0))  # ready
    serve_forwards(scheduler.tp_worker.model_runner, sock)


def build_attached_scheduler(scheduler_cls, server_args, port_args, storage):
    """A Scheduler whose KV pool, request table and weights are the owner's shared files."""

    class AttachedScheduler(scheduler_cls):
        def init_memory_pools(self):
            with storage.shared_allocations("pool"):
                super().init_memory_pools()

    scheduler = AttachedScheduler(server_args, port_args)
    storage.share_parameters(scheduler.tp_worker.model_runner.model)
    return scheduler


def serve_forwards(model_runner, sock: zmq.Socket) -> None:
    import torch

    while True:
        message = recv(sock)
        if isinstance(message, SetThreads):
            torch.set_num_threads(message.threads)
            continue
        started = time.time()
        try:
            attach_to_runner(message.forward_batch, model_runner)
            with torch.no_grad():
                out = model_runner.forward(message.forward_batch)
            send(sock, ForwardResult(message.seq, out.logits_output, started, time.time()))
        except Exception:
            logger.exception("prefill forward failed")
            send(sock, ForwardResult(message.seq, None, started, time.time(), error=traceback.format_exc()))


def forward_payload(forward_batch):
    """What the prefill worker needs of a ForwardBatch, small enough to send per step.

    Tensors are copied out of the owner's large buffers (a view would pickle the whole buffer);
    the sampling state stays with the owner, and the KV write plan, which refers to the owner's
    pools, is rebuilt against the worker's (the same shared memory) by attach_to_runner."""
    import copy

    import torch

    payload = copy.copy(forward_batch)
    for name, value in vars(payload).items():
        if isinstance(value, torch.Tensor):
            setattr(payload, name, value.clone())
    payload.sampling_info = None
    payload.kv_loc_plan = None
    payload.kv_loc_cols = None
    return payload


def attach_to_runner(forward_batch, model_runner) -> None:
    translator = model_runner.kv_index_translator
    translator.own_plan(forward_batch).bind(forward_batch, translator)


class PrefillLink:
    """The owner's side: starts the prefill worker, sends it batches, collects results."""

    def __init__(self, server_args, storage_dir: str, threads: int):
        import multiprocessing

        self.endpoint = f"ipc://{storage_dir}/prefill.sock"
        self.sock = zmq.Context.instance().socket(zmq.PAIR)
        self.sock.bind(self.endpoint)
        self.process = multiprocessing.get_context("spawn").Process(
            target=run_prefill_worker, args=(server_args, storage_dir, self.endpoint, threads),
            name="semipd-prefill", daemon=True)
        self.process.start()
        self.seq = 0
        self.inflight = None  # (seq, batch, forward_batch) of the batch being prefilled

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        if not self.sock.poll(int(timeout_s * 1000)):
            raise RuntimeError(f"the prefill worker did not start within {timeout_s:.0f} s")
        ready = recv(self.sock)
        if ready.error:
            raise RuntimeError(f"the prefill worker failed to start:\n{ready.error}")

    @property
    def busy(self) -> bool:
        return self.inflight is not None

    def launch(self, batch, forward_batch) -> None:
        self.seq += 1
        send(self.sock, ForwardRequest(self.seq, forward_payload(forward_batch)))
        self.inflight = (self.seq, batch, forward_batch)

    def poll(self, timeout_ms: int = 0):
        """The finished (batch, forward_batch, result), or None while the worker is busy."""
        if self.inflight is None:
            return None
        if not self.sock.poll(timeout_ms):
            if not self.process.is_alive():  # fail loudly rather than leave requests waiting
                raise RuntimeError(f"the prefill worker exited (code {self.process.exitcode}) "
                                   f"during batch {self.inflight[0]}")
            return None
        result = recv(self.sock)
        seq, batch, forward_batch = self.inflight
        if result.seq != seq:
            raise RuntimeError(f"prefill worker answered batch {result.seq}, expected {seq}")
        if result.error:
            raise RuntimeError(f"prefill worker failed on batch {seq}:\n{result.error}")
        self.inflight = None
        return batch, forward_batch, result

    def poll_wait(self, timeout_ms: int) -> None:
        """Sleep until the worker has something to say, or timeout_ms passes."""
        self.sock.poll(timeout_ms)

    def set_threads(self, threads: int) -> None:
        send(self.sock, SetThreads(threads))
