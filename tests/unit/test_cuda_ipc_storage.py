"""The GPU storage manifest and KV write ordering (engine/semipd/cuda_ipc_storage.py).

The manifest's round trip runs for real between two processes with CPU tensors: torch's
reductions are the same code on CUDA (there they carry cudaIpcMemHandles). The events and streams
are fakes that keep a timeline; the worker's step runs on a fake model runner. No GPU: nothing here claims a GPU result."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing

from engine.semipd.cuda_ipc_storage import StepOrder, attach, dumps, export_manifest, loads, refusals
from engine.semipd.mailbox import Mailbox
from engine.semipd.prefill_worker import ForwardRequest, ForwardResult, PrefillLink, run_forward, send
from engine.semipd.shared_storage import StorageMismatch


def owner_tensors():
    return [("param.embed", torch.arange(12, dtype=torch.float32).view(3, 4)),
            ("pool.k.0", torch.zeros(8, 2, 4, dtype=torch.bfloat16)),
            ("req_to_token", torch.zeros(4, 16, dtype=torch.int32))]


def wanted_of(named):
    return [(name, tuple(t.shape), t.dtype) for name, t in named]


WORKER = """
import sys, torch, torch.multiprocessing
torch.multiprocessing.set_sharing_strategy("file_system")
from engine.semipd.cuda_ipc_storage import attach, loads
manifest = loads(sys.stdin.buffer.read())
wanted = [("param.embed", (3, 4), torch.float32), ("pool.k.0", (8, 2, 4), torch.bfloat16),
          ("req_to_token", (4, 16), torch.int32)]
tensors = attach(manifest, wanted)
print(float(tensors["param.embed"].sum()))
tensors["pool.k.0"][5].fill_(2.5)   # a KV write by the worker
tensors["req_to_token"][1, :3] = torch.tensor([7, 8, 9], dtype=torch.int32)
"""


@pytest.fixture
def file_system_sharing():
    """CPU handles as file names (the default passes file descriptors, which need a live
    multiprocessing connection); CUDA handles are bytes either way."""
    before = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    yield
    torch.multiprocessing.set_sharing_strategy(before)


def test_a_worker_process_opens_the_owners_tensors_in_place_and_its_writes_are_the_owners(file_system_sharing):
    named = owner_tensors()
    data = dumps(export_manifest(named))
    done = subprocess.run([sys.executable, "-c", WORKER], input=data, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert float(done.stdout.decode().split()[-1]) == float(named[0][1].sum())  # read the weights
    tensors = dict(named)
    assert torch.all(tensors["pool.k.0"][5] == 2.5) and torch.all(tensors["pool.k.0"][4] == 0)
    assert tensors["req_to_token"][1, :3].tolist() == [7, 8, 9]


def test_the_manifest_round_trips_through_bytes_in_order():
    named = owner_tensors()
    manifest = loads(dumps(export_manifest(named)))
    assert [(e.name, e.shape, e.dtype) for e in manifest] == [
        ("param.embed", (3, 4), "torch.float32"), ("pool.k.0", (8, 2, 4), "torch.bfloat16"),
        ("req_to_token", (4, 16), "torch.int32")]


@pytest.mark.parametrize("change,message", [
    (lambda w: [w[0], ("pool.k.0", (8, 2, 8), torch.bfloat16), w[2]], "shared tensor 1: the owner made"),
    (lambda w: [w[0], ("pool.k.0", (8, 2, 4), torch.float16), w[2]], "torch.float16"),
    (lambda w: [w[0], w[2], w[1]], "shared tensor 1"),  # order
    (lambda w: w[:2], "this worker wants 2: the owner made more"),
    (lambda w: [*w, ("pool.v.0", (8, 2, 4), torch.bfloat16)], "this worker wants 4: the owner made fewer"),
])
def test_a_manifest_that_differs_is_an_error_naming_the_first_difference(change, message):
    named = owner_tensors()
    manifest = export_manifest(named)
    opened = []
    with pytest.raises(StorageMismatch, match=message):
        attach(manifest, change(wanted_of(named)), rebuild=lambda handle: opened.append(handle))
    assert opened == []  # nothing is opened before the whole manifest checks out


def test_a_handle_that_opens_as_something_else_is_an_error():
    named = owner_tensors()[:1]
    with pytest.raises(StorageMismatch, match="opened as"):
        attach(export_manifest(named), wanted_of(named), rebuild=lambda handle: torch.zeros(2))


def test_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        export_manifest([("a", torch.zeros(1)), ("a", torch.zeros(1))], reduce=lambda t: ())


def test_what_legacy_cuda_ipc_cannot_share_is_refused_by_flag():
    assert refusals(SimpleNamespace(), {}) == []
    found = refusals(SimpleNamespace(enable_memory_saver=True, enable_symm_mem=True, enable_torch_symm_mem=True,
                                     enable_unified_memory=True),
                     {"PYTORCH_CUDA_ALLOC_CONF": "garbage_collection_threshold:0.6, expandable_segments:True"})
    assert [f.split(":")[0] for f in found] == ["PYTORCH_CUDA_ALLOC_CONF=expandable_segments", "--enable-memory-saver",
                                                "--enable-symm-mem", "--enable-torch-symm-mem", "--enable-unified-memory"]


class Timeline:
    """Fake CUDA streams and events: each op is appended; a wait notes which record it waits for."""

    def __init__(self):
        self.ops: list[tuple] = []

    def stream(self, name):
        timeline = self

        class Stream:
            def wait_event(self, event):
                timeline.ops.append(("wait", name, event.name, event.last_record))

        return Stream()

    def event(self, name):
        timeline = self

        class Event:
            def __init__(self):
                self.name, self.last_record = name, None

            def record(self, stream):
                self.last_record = len(timeline.ops)
                timeline.ops.append(("record", name))

        return Event()


def test_a_gpu_step_waits_for_each_write_by_its_slots_event_in_both_directions():
    """Owner and worker each hold the StepOrder (the worker's opened from the owner's handles); the
    worker's forward runs after its stream waited for the owner's batch copy, and the owner's
    reads wait for the event the worker recorded after the forward and the logits copy."""
    t = Timeline()
    names = iter([*(f"{kind}{slot}" for kind in ("batch", "result") for slot in range(2)),
                  "decode_released", "prefill_released"])
    owner_order = StepOrder.new(2, event=lambda: t.event(next(names)))
    moves = owner_order.moves
    by_handle = {}
    for event in [*owner_order.batch.events, *owner_order.result.events, moves.decode_released,
                  moves.prefill_released]:
        event.ipc_handle = lambda event=event: event.name
        by_handle[event.name] = event
    worker_order = StepOrder.open(owner_order.handles(), opener=by_handle.__getitem__)
    assert worker_order.result.events == owner_order.result.events
    assert worker_order.moves == moves  # a green-context move's two events, the same in both

    slots = [(Mailbox(torch.zeros(4096, dtype=torch.uint8)), Mailbox(torch.zeros(4096, dtype=torch.uint8)))
             for _ in range(2)]
    runner = SimpleNamespace(kv_index_translator=SimpleNamespace(
        own_plan=lambda batch: SimpleNamespace(bind=lambda batch, translator: None)))

    def forward(batch):
        t.ops.append(("forward", batch.input_ids.tolist()))
        return SimpleNamespace(logits_output=SimpleNamespace(next_token_logits=batch.input_ids.float() * 2))

    runner.forward = forward
    owner, worker = t.stream("owner"), t.stream("worker")
    batch_box, logits_box = slots[1]
    payload = batch_box.pack(SimpleNamespace(input_ids=torch.arange(3)))
    owner_order.batch.written(1, owner)  # batch seq 1 takes slot 1
    result = run_forward(ForwardRequest(1, payload), runner, slots, worker_order, stream=worker)
    assert result.error is None
    owner_order.result.before_reading(1, owner)
    assert logits_box.unpack(result.logits_output, copy_out=True).next_token_logits.tolist() == [0.0, 2.0, 4.0]
    assert t.ops == [("record", "batch1"), ("wait", "worker", "batch1", 0), ("forward", [0, 1, 2]),
                     ("record", "result1"), ("wait", "owner", "result1", 3)]


def test_without_events_a_cpu_step_runs_the_forward_alone_and_a_failure_is_reported():
    slots = [(Mailbox(torch.zeros(4096, dtype=torch.uint8)), Mailbox(torch.zeros(4096, dtype=torch.uint8)))]
    runner = SimpleNamespace(kv_index_translator=SimpleNamespace(
        own_plan=lambda batch: SimpleNamespace(bind=lambda batch, translator: None)),
        forward=lambda batch: 1 / 0)
    result = run_forward(ForwardRequest(4, slots[0][0].pack(SimpleNamespace(x=torch.ones(2)))), runner, slots)
    assert result.seq == 4 and result.logits_output is None and "ZeroDivisionError" in result.error


def test_the_owner_reads_the_workers_green_context_moves_apart_from_its_answers():
    from collections import deque

    import zmq

    from engine.partition import Split
    from engine.partition.green_contexts import Moved

    context = zmq.Context.instance()
    owner_side, worker_side = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    owner_side.bind("inproc://semipd-moves-test")
    worker_side.connect("inproc://semipd-moves-test")
    link = object.__new__(PrefillLink)  # its socket side alone: no worker process is started
    link.sock, link.moves, link.inflight, link.ready, link.stats = owner_side, deque(), deque(), True, {"bytes_received": 0}
    try:
        send(worker_side, Moved(Split(40, 92)))  # answered while it held no batch
        assert link.take_moves() == [Split(40, 92)] and link.take_moves() == []
        link.inflight.append("batch 1")  # a move answered before a batch's result is kept aside
        send(worker_side, Moved(Split(96, 36)))
        send(worker_side, ForwardResult(1, None, 0.0, 0.0))
        assert link._next_answer(5000).seq == 1
        assert link.take_moves() == [Split(96, 36)]
        link.inflight.clear()
        send(worker_side, ForwardResult(2, None, 0.0, 0.0))
        with pytest.raises(RuntimeError, match="answered a batch it was not sent"):
            link.take_moves()
    finally:
        owner_side.close(linger=0)
        worker_side.close(linger=0)


def test_the_gpu_probes_worker_scripts_compile():
    # They run only on a GPU (python -m engine.gpu_probe): here, at least, they are valid Python.
    from engine import gpu_probe

    for name in ("WORKER", "EVENT_WORKER"):
        compile(getattr(gpu_probe, name), f"gpu_probe.{name}", "exec")
