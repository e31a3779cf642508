"""The two-process owner's green-context moves (engine/semipd/owner.py with --gpu-partition
green-contexts) on fakes of CUDA: the owner object without SGLang's scheduler under it, its
prefill worker a fake link that records what it is sent, streams and events on one timeline."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

from engine.partition import Split, Workers
from engine.partition.green_contexts import GreenContexts, MoveEvents, OwnerStreams, UseSplit, worker_move
from engine.semipd.owner import SemiPDScheduler
from engine.semipd.prefill_worker import WorkerDied
from engine.semipd.split_log import new_history
from tests.unit.test_partition_gpu import MoveTimeline


class FakeLink:
    """A prefill worker's link: what the owner sends, and the worker's side of each move."""

    def __init__(self, t: MoveTimeline, name: str, ready: bool = True):
        self.t, self.ready, self.pid = t, ready, name
        self.order = SimpleNamespace(moves=MoveEvents(t.event(f"{name}:decode_released"),
                                                      t.event(f"{name}:prefill_released")))
        self.sent: list[UseSplit] = []
        self.moves: deque = deque()
        self.inflight: deque = deque()
        self.idle_since = None
        self.stream = t.stream(f"{name}:default")
        self.table = t.table(name)
        self.stopped = False

    busy = property(lambda self: bool(self.inflight))

    def use_split(self, message: UseSplit) -> bool:
        if self.ready:
            self.sent.append(message)
        return self.ready

    def batch_boundary(self) -> None:
        """The worker reads what it was sent after its current batch, and answers each move."""
        for message in self.sent:
            self.stream, moved = worker_move(message, self.table, self.stream, self.order.moves, self.t.handover_event)
            self.moves.append(moved.split)
        self.sent.clear()

    def take_moves(self) -> list:
        moves, self.moves = list(self.moves), deque()
        return moves

    def poll(self, timeout_ms=0):
        return None

    def stop(self):
        self.stopped = True


class Metrics:
    def __init__(self):
        self.deaths = []

    record_split = record_switch = lambda self, *args: None

    def record_worker_death(self, cause):
        self.deaths.append(cause)


def owner_on_fakes():
    t = MoveTimeline()
    owner = object.__new__(SemiPDScheduler)
    owner.partition = GreenContexts(device_sms=132, min_sms=8, step=8)
    owner.prefill_link = FakeLink(t, "worker1")
    owner.decode_stream = t.stream("owner:default")

    def set_stream(stream):
        owner.decode_stream = stream

    owner.streams = OwnerStreams(t.table("owner"), lambda: owner.decode_stream, set_stream, t.handover_event,
                                 lambda: owner.prefill_link.order.moves, lambda m: owner.prefill_link.use_split(m))
    owner._workers = Workers(pids=dict, set_threads=lambda role, n: None, use_stream=owner.streams.use_stream)
    owner.split, owner.split_history, owner.semipd_metrics = None, new_history(), Metrics()
    owner.queued_split = owner.resume_split = owner.standby = owner.last_batch = None
    owner.swap_standby = owner.lend_idle_cores = owner._swap_due = False
    owner.worker_split = Split(132, 132)
    owner._rerun_locally = lambda exc: None  # it held no batch
    owner._start_worker = lambda split: FakeLink(t, "worker2", ready=False)
    return owner, t


def test_a_split_asked_for_during_a_move_waits_for_it_and_follows():
    owner, t = owner_on_fakes()
    link = owner.prefill_link
    owner.apply_split(Split(96, 36), who="launch")
    assert link.sent == [UseSplit(Split(96, 36), after_decode=False)] and owner.streams.moving

    reply = owner.handle_control({"op": "set_split", "prefill": 40, "decode": 92, "who": "tuner"})
    assert reply["ok"] and reply["applied"] is None and reply["pending"] == "40,92"
    assert reply["split"] == {"prefill": 96, "decode": 36} and Split(8, 124) in map(lambda p: Split(*p), reply["menu"])

    owner._watch_moves()  # the worker is still in its batch: nothing moves
    assert owner.decode_stream.name == "owner:default" and owner.queued_split

    link.batch_boundary()
    owner._watch_moves()  # the launch's move is done; then the tuner's split starts, prefill shrinking first
    assert owner.split == Split(40, 92) and owner.split_history[-1]["who"] == "tuner"
    assert owner.decode_stream.name == "owner:rest36"  # decode keeps 36 SMs until the worker gives up 96
    assert link.sent == [UseSplit(Split(40, 92), after_decode=False)] and owner.queued_split is None

    link.batch_boundary()
    owner._watch_moves()
    assert (owner.decode_stream.name, link.stream.name) == ("owner:rest92", "worker1:group40")
    assert owner.handle_control({"op": "get_split"})["pending"] is None


def test_a_worker_that_dies_mid_move_is_replaced_and_the_split_asked_for_follows_it():
    owner, t = owner_on_fakes()
    owner.apply_split(Split(96, 36), who="launch")
    owner.prefill_link.batch_boundary()
    owner._watch_moves()
    owner.apply_split(Split(40, 92), who="tuner")  # prefill shrinks: decode waits for the worker
    owner.handle_control({"op": "set_split", "prefill": 64, "decode": 68, "who": "tuner"})

    old = owner.prefill_link
    owner._worker_died(WorkerDied("the prefill worker exited (code -9) while idle", []))
    assert old.stopped and owner.prefill_link.pid == "worker2" and owner.semipd_metrics.deaths == ["exited"]
    assert owner.split == Split(132, 132) and owner.decode_stream.name == "owner:whole"  # unified meanwhile
    assert not owner.streams.moving and owner.queued_split is None
    assert owner.resume_split == Split(64, 68)  # the split last asked for, once the new worker is ready
    assert owner.prefill_link.sent == []  # a worker still starting is told nothing: it starts whole
