"""The prefill worker: a process that runs prefill forward passes over the owner's storage.

The decode worker (SGLang's scheduler process, the single owner of the radix tree, the KV
allocator and the request table) forms each prefill batch, allocates its KV slots, and sends the
batch's `ForwardBatch` here. This process runs the model on it, writing K and V straight into the
shared pool, and returns only the logits; the owner samples, streams and merges the requests into
its decode batch. Nothing is copied at the hand-off, and allocation has one owner. Per step only
metadata crosses the socket: the batch's tensors and the logits go through mailboxes in the
unified storage (engine/semipd/mailbox.py).

The worker may hold two batches: the one it runs and the next, formed by the owner meanwhile,
which it starts as soon as it is free instead of waiting for the owner's next look (after a
decode step). Each of the two has its own pair of mailboxes.

This process is a stock SGLang `Scheduler` (so the model, pools and attention backend are built
by SGLang's own code) whose pools and weights are mapped onto the owner's shared files, and whose
event loop is replaced by `serve_forwards`. Its SGLang IPC sockets get fresh private names, so it
never sees requests from the tokenizer.

Failures: a worker that exits, or holds a batch for longer than the link's `hung_after_s` without
answering (stopped, deadlocked), is the owner's to replace (`WorkerDied`); a worker whose owner
dies, even by SIGKILL, removes the shared storage and exits, so that nothing is left behind.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import signal
import time
import traceback
from collections import deque
from dataclasses import dataclass

import zmq

from engine.partition.green_contexts import Moved, UseSplit, device_stream_table, worker_move
from engine.semipd.cuda_ipc_storage import StepOrder
from engine.semipd.mailbox import Mailbox

logger = logging.getLogger(__name__)

# Mailbox sizes: sparse shared files, so only the pages a step touches take memory. A batch's
# tensors are a few int64 per token; logits are (requests in the batch) x vocabulary x 4 bytes.
BATCH_MAILBOX_BYTES = 64 << 20
LOGITS_MAILBOX_BYTES = 256 << 20
# A PAIR socket's send blocks while no peer is connected: a dead worker must not hang the owner.
SEND_TIMEOUT_MS = 2000
HUNG_AFTER_S = 60.0  # default: a batch held this long without an answer means the worker is hung
PR_SET_PDEATHSIG = 1  # linux/prctl.h
PIPELINE_DEPTH = 2  # at most, batches the worker may hold: the one it runs and the next


class WorkerDied(RuntimeError):
    """The prefill worker exited or stopped answering; `inflight` is what it held, oldest first;
    `cause` is "exited" or "hung"."""

    def __init__(self, message: str, inflight, cause: str = "exited"):
        super().__init__(message)
        self.inflight, self.cause = inflight, cause


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


def send(sock: zmq.Socket, message) -> int:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.send(data)
    return len(data)


def recv(sock: zmq.Socket):
    data = sock.recv()
    return pickle.loads(data), len(data)


def mailboxes(storage) -> list[tuple[Mailbox, Mailbox]]:
    """(batches to the worker, logits from it) per pipeline slot: the same files in both
    processes. Batch `seq` uses slot seq % PIPELINE_DEPTH. The owner writes a batch into a slot
    only after it has read the answer to the slot's previous batch, so the worker is done with it
    and its logits are copied out."""
    import torch

    def box(kind: str, slot: int, size: int) -> Mailbox:
        return Mailbox(storage.tensor(f"mailbox.{kind}.{slot}", (size,), torch.uint8), f"{kind} mailbox {slot}")

    return [(box("batch", slot, BATCH_MAILBOX_BYTES), box("logits", slot, LOGITS_MAILBOX_BYTES))
            for slot in range(PIPELINE_DEPTH)]


def die_with_owner(owner_pid: int, leftovers: list[str]) -> None:
    """End this process when its owner dies, even by SIGKILL (the kernel signals it: Linux's
    parent-death signal), removing `leftovers` (the shared storage, which only the owner's own
    clean exit removes otherwise): no orphan worker, no stale shared memory."""
    import ctypes

    def on_signal(signum, frame):
        # The signal comes when the owner's thread that started this worker exits: while the
        # owner's other threads die, this process may still be theirs for a moment.
        deadline = time.monotonic() + 2.0
        while os.getppid() == owner_pid and time.monotonic() < deadline:
            time.sleep(0.01)
        if os.getppid() != owner_pid:  # the owner is gone (not a plain SIGTERM): what it shared goes too
            for path in leftovers:
                shutil.rmtree(path, ignore_errors=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the owner's exit (and daemon flag) stop it instead
        logger.warning("no parent-death signal on this system: a killed owner leaves this worker running")
    if os.getppid() != owner_pid:  # the owner died before the signal was armed
        on_signal(signal.SIGTERM, None)


def run_prefill_worker(server_args, storage_dir: str, endpoint: str, threads: int | None, owner_pid: int,
                       order_handles: tuple[list, list] | None = None, env: dict[str, str] | None = None) -> None:
    """Entry point of the prefill worker process (started with `spawn` by the owner). `env` is set
    before anything initializes CUDA (MPS reads the SM percentage when the context is created); on a
    GPU `order_handles` are the IPC handles of the owner's StepOrder events."""
    import tempfile

    os.environ.update(env or {})

    # SGLang's scheduler metrics of this process would shadow the owner's (same labels): keep
    # them out of the directory that /metrics reads.
    metrics_dir = tempfile.mkdtemp(prefix="semipd-prefill-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    import torch
    from sglang.srt.managers import scheduler as scheduler_module
    from sglang.srt.runtime_context import SpawnRanks, publish
    from sglang.srt.server_args import PortArgs

    from engine.attention import backend
    from engine.semipd.ipc_storage import attach_storage

    backend.register()  # this process builds its own model runner
    if threads:
        torch.set_num_threads(threads)
    publish(server_args, role="scheduler", ranks=SpawnRanks(world_rank=0, dp_rank=None, gpu_id=0))
    scheduler_module.configure_scheduler_process(server_args, 0)
    die_with_owner(owner_pid, [storage_dir, metrics_dir])  # after SGLang's own parent-death SIGKILL, replacing it
    sock = zmq.Context.instance().socket(zmq.PAIR)
    sock.connect(endpoint)
    try:
        storage = attach_storage(storage_dir)
        scheduler = build_attached_scheduler(scheduler_module.Scheduler, server_args,
                                             PortArgs.init_new(server_args), storage)
        slots = mailboxes(storage)
        storage.check_complete()
        order = StepOrder.open(order_handles) if order_handles else None
    except Exception:
        send(sock, ForwardResult(-1, None, 0.0, 0.0, error=traceback.format_exc()))
        raise
    send(sock, ForwardResult(-1, None, 0.0, 0.0))  # ready
    serve_forwards(scheduler.tp_worker.model_runner, sock, slots, order)


def build_attached_scheduler(scheduler_cls, server_args, port_args, storage):
    """A Scheduler whose KV pool, request table and weights are the owner's: shared files, or
    (IPC storage) tensors opened in place, with no weights read and the owner's pool sizes."""
    from contextlib import nullcontext

    from engine.semipd.ipc_storage import IpcStorage
    from engine.sglang_seams import worker_build

    class AttachedScheduler(scheduler_cls):
        def init_memory_pools(self):
            with storage.shared_allocations("pool"):
                super().init_memory_pools()

    with worker_build(storage.pool_config) if isinstance(storage, IpcStorage) else nullcontext():
        scheduler = AttachedScheduler(server_args, port_args)
    storage.share_parameters(scheduler.tp_worker.model_runner.model)
    return scheduler


def serve_forwards(model_runner, sock: zmq.Socket, slots: list[tuple[Mailbox, Mailbox]], order=None) -> None:
    """Answer each message in turn, so a thread count or a green-context move (`UseSplit`) takes
    effect at a batch boundary."""
    import torch

    streams = None  # this process's green-context streams, made at the first move
    while True:
        message, _ = recv(sock)
        if isinstance(message, SetThreads):
            torch.set_num_threads(message.threads)
            continue
        if isinstance(message, UseSplit):
            streams = streams or device_stream_table()
            stream, moved = worker_move(message, streams, current_stream(), order.moves, torch.cuda.Event)
            torch.cuda.set_stream(stream)
            send(sock, moved)
            continue
        send(sock, run_forward(message, model_runner, slots, order))


def run_forward(message: ForwardRequest, model_runner, slots: list[tuple[Mailbox, Mailbox]], order=None,
                stream=None) -> ForwardResult:
    """One prefill forward over the owner's storage. On a GPU (`order`, a StepOrder) the forward
    waits for the owner's batch copy and the answer goes out once the KV and logits writes are
    launched and their event recorded: the owner's stream waits on it, this process does not sync.
    (Its `finished` time is then when the work was launched, not done.)"""
    import torch

    started = time.time()
    slot = message.seq % len(slots)
    batch_box, logits_box = slots[slot]
    try:
        if order is not None:
            stream = stream or current_stream()
            order.batch.before_reading(slot, stream)
        forward_batch = batch_box.unpack(message.forward_batch)
        attach_to_runner(forward_batch, model_runner)
        with torch.no_grad():
            out = model_runner.forward(forward_batch)
        logits = logits_box.pack(out.logits_output)
        if order is not None:
            order.result.written(slot, stream)
        return ForwardResult(message.seq, logits, started, time.time())
    except Exception:
        logger.exception("prefill forward failed")
        return ForwardResult(message.seq, None, started, time.time(), error=traceback.format_exc())


def forward_payload(forward_batch, batch_box: Mailbox):
    """What the prefill worker needs of a ForwardBatch: its tensors in the mailbox, the rest as
    metadata. The sampling state stays with the owner, and the KV write plan, which refers to the
    owner's pools, is rebuilt against the worker's (the same shared memory) by attach_to_runner."""
    payload = batch_box.pack(forward_batch)
    payload.sampling_info = None
    payload.kv_loc_plan = None
    payload.kv_loc_cols = None
    return payload


def attach_to_runner(forward_batch, model_runner) -> None:
    translator = model_runner.kv_index_translator
    translator.own_plan(forward_batch).bind(forward_batch, translator)


@dataclass
class Inflight:
    seq: int
    batch: object  # sglang ScheduleBatch, owned by the owner
    forward_batch: object
    queued_since: float


class PrefillLink:
    """The owner's side: starts the prefill worker, sends it batches, collects results.

    Counts what crosses the socket (`stats`), so a test can bound the bytes per step, and the
    time the worker sat idle while a request of its next batch was already queued
    (`idle_with_work_s`), the cost the pipeline removes."""

    def __init__(self, server_args, storage, threads: int | None, slots: list[tuple[Mailbox, Mailbox]],
                 depth: int = PIPELINE_DEPTH, hung_after_s: float = HUNG_AFTER_S, env: dict[str, str] | None = None):
        import multiprocessing

        if not 1 <= depth <= len(slots):
            raise ValueError(f"prefill pipeline depth {depth} is out of range 1..{len(slots)}")
        if not hung_after_s > 0:
            raise ValueError(f"the prefill worker's hang timeout {hung_after_s} s must be positive")
        self.slots, self.depth, self.hung_after_s = slots, depth, hung_after_s
        self.endpoint = f"ipc://{storage.directory}/prefill-{time.monotonic_ns()}.sock"
        self.sock = zmq.Context.instance().socket(zmq.PAIR)
        self.sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        self.sock.bind(self.endpoint)
        # on a GPU, events order each slot's writes before the other process reads it
        self.order = StepOrder.new(len(slots)) if storage.device == "cuda" else None
        self.process = multiprocessing.get_context("spawn").Process(
            target=run_prefill_worker, name="semipd-prefill", daemon=True,
            args=(server_args, str(storage.directory), self.endpoint, threads, os.getpid(),
                  self.order.handles() if self.order else None, env))
        self.process.start()
        self.seq = 0
        self.ready = False
        self.moves: deque = deque()  # green-context moves the worker has made (Moved.split), oldest first
        self.inflight: deque[Inflight] = deque()  # oldest (the one running) first
        self.running_since = 0.0  # monotonic time the oldest batch held became the one to run
        self.idle_since: float | None = None  # wall time the worker last became free
        self.stats = {"batches": 0, "bytes_sent": 0, "bytes_received": 0, "inline_tensors": 0,
                      "pipelined": 0, "idle_with_work_s": 0.0}  # pipelined: sent while another ran

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        if not self.poll_ready(timeout_s):
            raise RuntimeError(f"the prefill worker did not start within {timeout_s:.0f} s")

    def poll_ready(self, timeout_s: float = 0.0) -> bool:
        """True once the worker has loaded; RuntimeError if it failed to start."""
        if self.ready:
            return True
        if not self.sock.poll(int(timeout_s * 1000)):
            if not self.process.is_alive():
                raise RuntimeError(f"the prefill worker exited (code {self.process.exitcode}) while starting")
            return False
        ready, _ = recv(self.sock)
        if ready.error:
            raise RuntimeError(f"the prefill worker failed to start:\n{ready.error}")
        self.ready = True
        return True

    @property
    def busy(self) -> bool:
        return bool(self.inflight)

    @property
    def has_room(self) -> bool:
        return len(self.inflight) < self.depth

    def inflight_reqs(self) -> list:
        return [req for held in self.inflight for req in held.batch.reqs]

    def launch(self, batch, forward_batch, queued_since: float) -> None:
        """Send a batch; `queued_since` is the wall time its oldest request has waited since.
        WorkerDied (holding this batch too) when the worker is gone."""
        if not self.has_room:
            raise RuntimeError(f"the prefill worker already holds {len(self.inflight)} batches")
        self.seq += 1
        held = Inflight(self.seq, batch, forward_batch, queued_since)
        if not self.process.is_alive():
            raise WorkerDied(f"the prefill worker exited (code {self.process.exitcode}) before batch "
                             f"{self.seq}", [*self.inflight, held])
        batch_box, _ = self.slots[self.seq % len(self.slots)]
        payload = forward_payload(forward_batch, batch_box)
        if self.order is not None:
            self.order.batch.written(self.seq % len(self.slots), current_stream())
        try:
            sent = send(self.sock, ForwardRequest(self.seq, payload))
        except zmq.Again:
            raise WorkerDied(f"the prefill worker took no batch for {SEND_TIMEOUT_MS} ms (exit code "
                             f"{self.process.exitcode})", [*self.inflight, held]) from None
        self.stats["inline_tensors"] += inline_tensors(payload)
        self.stats["bytes_sent"] += sent
        self.stats["batches"] += 1
        self.stats["pipelined"] += bool(self.inflight)
        if not self.inflight:
            self.running_since = time.monotonic()
        self.inflight.append(held)

    def poll(self, timeout_ms: int = 0):
        """The oldest finished (batch, forward_batch, result), or None while the worker is busy.
        WorkerDied when the worker is gone (with the batches it held)."""
        if not self.inflight:
            return None
        if (result := self._next_answer(timeout_ms)) is None:
            if not self.process.is_alive():
                raise WorkerDied(f"the prefill worker exited (code {self.process.exitcode}) during batch "
                                 f"{self.inflight[0].seq}", list(self.inflight))
            if time.monotonic() - self.running_since > self.hung_after_s:
                self.process.kill()  # stopped or deadlocked: it will not answer, and must not later
                self.process.join(timeout=5)
                raise WorkerDied(f"the prefill worker did not answer batch {self.inflight[0].seq} within "
                                 f"{self.hung_after_s:g} s (hung); killed", list(self.inflight), "hung")
            return None
        held = self.inflight[0]
        if result.seq != held.seq:
            raise RuntimeError(f"prefill worker answered batch {result.seq}, expected {held.seq}")
        if result.error:
            raise RuntimeError(f"prefill worker failed on batch {held.seq}:\n{result.error}")
        self.stats["inline_tensors"] += inline_tensors(result.logits_output)
        # copied out: this slot's logits are overwritten once its next batch is sent
        _, logits_box = self.slots[held.seq % len(self.slots)]
        if self.order is not None:  # the copy, and every later read of this prefill's KV, after its writes
            self.order.result.before_reading(held.seq % len(self.slots), current_stream())
        logits_box.unpack(result.logits_output, copy_out=True)
        self.inflight.popleft()
        self.running_since = time.monotonic()  # the next one held, if any, runs from now
        if self.idle_since is not None:
            self.stats["idle_with_work_s"] += max(0.0, result.started - max(self.idle_since, held.queued_since))
        self.idle_since = result.finished
        return held.batch, held.forward_batch, result

    def _next_answer(self, timeout_ms: int) -> ForwardResult | None:
        """The worker's next answer to a batch within `timeout_ms`, its moves kept aside in `moves`."""
        while self.sock.poll(timeout_ms):
            message, size = recv(self.sock)
            self.stats["bytes_received"] += size
            if not isinstance(message, Moved):
                return message
            self.moves.append(message.split)
            timeout_ms = 0
        return None

    def take_moves(self) -> list:
        """The moves the worker has answered since last asked (read here while it holds no batch)."""
        if not self.inflight and self.ready:
            if self._next_answer(0) is not None:
                raise RuntimeError("the prefill worker answered a batch it was not sent")
        moves, self.moves = list(self.moves), deque()
        return moves

    def use_split(self, message: UseSplit) -> bool:
        """Tell the worker to move (green contexts); False when none is ready to (a new one starts
        on the whole device)."""
        if not self.ready:
            return False
        try:
            send(self.sock, message)
        except zmq.Again:  # the worker is gone: the next launch or poll says so
            logger.warning("the prefill worker did not take its move to split %s", message.split)
            return False
        return True

    def clear(self) -> list:
        """Forget the batches held (the worker is gone); returns them, oldest first."""
        held, self.inflight = list(self.inflight), deque()
        return held

    def poll_wait(self, timeout_ms: int) -> None:
        """Sleep until the worker has something to say, or timeout_ms passes."""
        self.sock.poll(timeout_ms)

    def set_threads(self, threads: int) -> None:
        try:
            send(self.sock, SetThreads(threads))
        except zmq.Again:  # the worker is gone: the next launch or poll says so
            logger.warning("the prefill worker did not take a thread count of %d", threads)

    def stop(self) -> None:
        """End the worker (if it still runs) and close the socket."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.sock.close(linger=0)


def current_stream():
    import torch

    return torch.cuda.current_stream()


def inline_tensors(message) -> int:
    """Tensors left in a message after packing (sent pickled): zero when everything fit."""
    import torch

    count = 0
    for value in vars(message).values():
        if isinstance(value, torch.Tensor):
            count += 1
        elif isinstance(value, (list, tuple)):
            count += sum(isinstance(v, torch.Tensor) for v in value)
    return count
