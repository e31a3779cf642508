"""GPU partition backends (mps, green_contexts) against fakes: no GPU, no CUDA calls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.partition import InvalidSplit, Split, Workers, WorkerStart
from engine.partition.green_contexts import (GreenContexts, MoveEvents, OwnerStreams, SmGranularity, StreamTable,
                                             UseSplit, hand_over, sgl_kernel_device_split, sm_granularity,
                                             switch_order, worker_move)
from engine.partition.cpu import CpuCores
from engine.partition.mps import MpsPrefillShare, check_mps_daemon, mps_environment

REPO = Path(__file__).resolve().parents[2]


def fake_workers(calls: list, *, stream: bool = True) -> Workers:
    return Workers(
        pids=lambda: {"prefill": 1, "decode": 2},
        set_threads=lambda role, n: calls.append(("set_threads", role, n)),
        use_stream=(lambda role, s: calls.append(("stream", role, s))) if stream else None,
    )


# --- mps -------------------------------------------------------------------------------------------

def test_mps_environment():
    assert mps_environment(60) == {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "60"}


class FakeRun:
    def __init__(self, returncode=0, stdout="", stderr="", raises=None):
        self.result = (returncode, stdout, stderr)
        self.raises = raises
        self.calls: list = []

    def __call__(self, args, **kwargs):
        self.calls.append((args, kwargs))
        if self.raises:
            raise self.raises
        return subprocess.CompletedProcess(args, *self.result)


@pytest.mark.parametrize("stdout", ["", "4321\n"])
def test_mps_daemon_answering(stdout):
    run = FakeRun(stdout=stdout)
    assert check_mps_daemon(run=run) is None
    args, kwargs = run.calls[0]
    assert args == ["nvidia-cuda-mps-control"]
    assert kwargs["input"].strip() == "get_server_list"


@pytest.mark.parametrize("run", [
    FakeRun(returncode=1, stderr="Cannot find MPS control daemon process"),
    FakeRun(returncode=0, stdout="Cannot find MPS control daemon process"),
])
def test_mps_daemon_missing(run):
    message = check_mps_daemon(run=run)
    assert message is not None
    assert "CUDA_MPS_ENABLE_PER_CTX_DEVICE_MULTIPROCESSOR_PARTITIONING=1" in message
    assert "nvidia-cuda-mps-control -d" in message
    assert "Cannot find MPS control daemon" in message


def test_mps_control_not_installed():
    message = check_mps_daemon(run=FakeRun(raises=FileNotFoundError("nvidia-cuda-mps-control")))
    assert message is not None and "not on PATH" in message and "nvidia-cuda-mps-control -d" in message


def test_mps_daemon_timeout():
    message = check_mps_daemon(run=FakeRun(raises=subprocess.TimeoutExpired("nvidia-cuda-mps-control", 10)))
    assert message is not None and "did not answer" in message


# --- the two-process engine's partitions: how a prefill worker starts -----------------------------

@pytest.mark.parametrize("split", [Split(50, 80), Split(0, 100), Split(101, 100), Split(50, True)])
def test_under_mps_the_decode_owner_keeps_every_sm_and_prefill_is_a_percentage(split):
    role = "decode" if 1 <= split.prefill <= 100 else "prefill"
    with pytest.raises(InvalidSplit, match=f"{role} share .* out of range: prefill a whole percentage.*decode 100"):
        MpsPrefillShare().check(split)


def test_an_mps_prefill_worker_starts_with_its_percentage_and_nothing_moves_live():
    share, calls = MpsPrefillShare(), []
    for ok in (Split(30, 100), Split(100, 100)):
        share.check(ok)
    assert share.worker_start(Split(30, 100)) == WorkerStart(None, env=(("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "30"),))
    assert share.worker_start(Split(30, 100)) != share.worker_start(Split(40, 100))  # a standby per share
    assert share.apply(Split(30, 100), fake_workers(calls)) == {"percent": {"prefill": 30, "decode": 100}}
    assert calls == [] and share.cores_of("decode") == []


def test_a_cpu_prefill_worker_starts_pinned_to_its_cores_with_as_many_threads():
    cores = CpuCores(cores=[0, 1, 2, 3])
    assert cores.worker_start(Split(3, 1)) == WorkerStart(3, cores=(0, 1, 2))
    assert cores.worker_start(Split(3, 1)) == cores.worker_start(Split(3, 4))  # decode's share: same worker


# --- green contexts --------------------------------------------------------------------------------

def hopper() -> GreenContexts:
    return GreenContexts(device_sms=132, min_sms=8, step=8)


class FakeDevice:
    """Stands in for sgl_kernel's device split and torch's whole-device streams, and their events."""

    def __init__(self):
        self.splits: list[tuple[int, int]] = []
        self.ops: list[tuple] = []

    def split_device(self, prefill_sms, decode_sms):
        self.splits.append((prefill_sms, decode_sms))
        return self.Stream(f"group{prefill_sms}"), self.Stream(f"rest{decode_sms}")

    def whole_device(self):
        return self.Stream("whole")

    def event(self):
        device = self

        class Event:
            def record(self, stream):
                device.ops.append(("record", stream.name))
                self.on = stream.name

        return Event()

    def Stream(self, name):
        device = self

        class Stream:
            def __init__(self):
                self.name = name

            def wait_event(self, event):
                device.ops.append(("wait", self.name, event.on))

        return Stream()


def test_granularity_by_architecture():
    assert sm_granularity(9) == SmGranularity(8, 8) == sm_granularity(10)
    assert sm_granularity(8) == SmGranularity(4, 2)
    with pytest.raises(ValueError, match="7.0 or later"):
        sm_granularity(6)


@pytest.mark.parametrize("split", [Split(4, 128), Split(64, 64), Split(64, 60), Split(128, 4), Split(0, 132),
                                   Split(64, False), Split(132, 64)])
def test_green_rejects_what_is_not_a_group_and_its_remainder_and_keeps_split(split):
    backend = hopper()
    calls: list = []
    backend.apply(Split(64, 68), fake_workers(calls))
    calls.clear()
    with pytest.raises(InvalidSplit, match="from 8 to 120 in steps of 8, decode the rest of this GPU's 132 SMs"):
        backend.apply(split, fake_workers(calls))
    assert calls == [] and backend.in_force == Split(64, 68)


def test_green_accepts_the_natural_remainder_and_the_whole_device_for_both():
    backend = hopper()
    backend.check(Split(64, 68))  # 68 is no multiple of 8: the remainder of a 64-SM group
    backend.check(Split(8, 124))
    backend.check(Split(132, 132))
    ampere = GreenContexts(device_sms=108, min_sms=4, step=2)
    ampere.check(Split(4, 104))
    with pytest.raises(InvalidSplit, match="from 4 to 104 in steps of 2"):
        ampere.check(Split(5, 103))


def test_the_shrinking_side_moves_first():
    assert switch_order(None, Split(64, 68)) == ["prefill", "decode"]
    assert switch_order(Split(64, 68), Split(96, 36)) == ["decode", "prefill"]  # decode shrinks
    assert switch_order(Split(96, 36), Split(40, 92)) == ["prefill", "decode"]  # prefill shrinks
    assert switch_order(Split(64, 68), Split(132, 132)) == ["decode", "prefill"]  # both grow: the lesser first
    assert switch_order(Split(64, 68), Split(64, 68)) == []


def test_green_asks_each_worker_to_move_in_switch_order():
    backend = hopper()
    calls: list = []
    backend.apply(Split(64, 68), fake_workers(calls))
    backend.apply(Split(96, 36), fake_workers(calls))
    backend.apply(Split(96, 36), fake_workers(calls))  # the same split again: nobody moves
    assert calls == [("stream", "prefill", Split(64, 68)), ("stream", "decode", Split(64, 68)),
                     ("stream", "decode", Split(96, 36)), ("stream", "prefill", Split(96, 36))]


def test_a_worker_stream_table_makes_one_device_split_per_split_and_keeps_it():
    device = FakeDevice()
    table = StreamTable(132, device.split_device, device.whole_device)
    prefill = table.stream("prefill", Split(64, 68))
    decode = table.stream("decode", Split(64, 68))
    assert (prefill.name, decode.name) == ("group64", "rest68") and device.splits == [(64, 68)]
    assert table.stream("prefill", Split(64, 68)) is prefill  # made once
    table.stream("decode", Split(96, 36))
    assert device.splits == [(64, 68), (96, 36)]
    whole_p, whole_d = table.stream("prefill", Split(132, 132)), table.stream("decode", Split(132, 132))
    assert whole_p is not whole_d and whole_p.name == whole_d.name == "whole"  # one stream per role


def test_hand_over_makes_the_new_stream_wait_for_the_old():
    device = FakeDevice()
    old, new = device.Stream("group64"), device.Stream("group96")
    hand_over(old, new, device.event)
    hand_over(None, new, device.event)  # the first stream: nothing to wait for
    hand_over(new, new, device.event)  # no move
    assert device.ops == [("record", "group64"), ("wait", "group96", "group64")]


class MoveTimeline:
    """Fake streams and events of the two processes on one timeline: a record notes its stream, a
    wait the record it waits for (the event's latest, as CUDA's stream wait does)."""

    def __init__(self):
        self.ops: list[tuple] = []
        self.handovers = 0

    def event(self, name: str):
        timeline = self

        class Event:
            latest = None

            def record(self, stream):
                self.latest = len(timeline.ops)
                timeline.ops.append(("record", name, stream.name))

        return Event()

    def handover_event(self):
        self.handovers += 1
        return self.event(f"handover{self.handovers}")

    def stream(self, name: str):
        timeline = self

        class Stream:
            def wait_event(self, event):
                timeline.ops.append(("wait", self.name, event.latest))

        stream = Stream()
        stream.name = name
        return stream

    def table(self, process: str) -> StreamTable:
        return StreamTable(132, lambda p, d: (self.stream(f"{process}:group{p}"), self.stream(f"{process}:rest{d}")),
                           lambda: self.stream(f"{process}:whole"))

    def work(self, stream, what: str) -> int:
        self.ops.append(("run", what, stream.name))
        return len(self.ops) - 1

    def waits_for(self, stream_name: str, record_at: int) -> bool:
        return ("wait", stream_name, record_at) in self.ops


class TwoProcesses:
    """The owner's OwnerStreams and the prefill worker's worker_move over one MoveTimeline; the
    worker reads what it was sent at its next batch boundary (`worker_boundary`)."""

    def __init__(self):
        self.t = t = MoveTimeline()
        self.events = MoveEvents(t.event("decode_released"), t.event("prefill_released"))
        self.worker_table = t.table("worker")
        self.worker_stream = t.stream("worker:default")
        self.owner_stream = t.stream("owner:default")
        self.sent: list[UseSplit] = []
        self.owner = OwnerStreams(t.table("owner"), lambda: self.owner_stream, self._set_owner_stream,
                                  t.handover_event, lambda: self.events, self._tell)
        self.backend = hopper()
        self.workers = Workers(pids=lambda: {}, set_threads=lambda role, n: None, use_stream=self.owner.use_stream)
        self.worker_ready = True

    def _set_owner_stream(self, stream):
        self.owner_stream = stream

    def _tell(self, message: UseSplit) -> bool:
        if self.worker_ready:
            self.sent.append(message)
        return self.worker_ready

    def worker_boundary(self) -> list:
        answers = []
        for message in self.sent:
            self.worker_stream, moved = worker_move(message, self.worker_table, self.worker_stream, self.events,
                                                    self.t.handover_event)
            answers.append(moved)
        self.sent.clear()
        return answers


def test_when_prefill_gives_up_sms_decode_takes_them_only_after_the_workers_last_batch_on_them():
    two = TwoProcesses()
    t, owner = two.t, two.owner
    two.backend.apply(Split(96, 36), two.workers)  # launch: the worker moves, then decode
    [moved] = two.worker_boundary()
    owner.worker_moved(moved.split)
    assert (two.owner_stream.name, two.worker_stream.name) == ("owner:rest36", "worker:group96")

    two.backend.apply(Split(40, 92), two.workers)  # prefill shrinks: it moves first
    assert two.sent == [UseSplit(Split(40, 92), after_decode=False)]
    assert owner.moving and two.owner_stream.name == "owner:rest36"  # decode keeps its share meanwhile
    last_prefill = t.work(two.worker_stream, "prefill batch on 96 SMs")
    t.work(two.owner_stream, "decode step on 36 SMs: not held up")
    [moved] = two.worker_boundary()
    released = next(i for i, op in enumerate(t.ops) if op == ("record", "prefill_released", "worker:group96"))
    assert released > last_prefill and two.worker_stream.name == "worker:group40"
    owner.worker_moved(moved.split)
    assert not owner.moving and two.owner_stream.name == "owner:rest92"
    assert t.waits_for("owner:rest92", released)  # decode's 92 SMs wait for prefill's last work on them


def test_when_decode_gives_up_sms_it_moves_at_once_and_the_worker_waits_for_its_release():
    two = TwoProcesses()
    t, owner = two.t, two.owner
    two.backend.apply(Split(40, 92), two.workers)
    owner.worker_moved(two.worker_boundary()[0].split)

    last_decode = t.work(two.owner_stream, "decode step on 92 SMs")
    two.backend.apply(Split(96, 36), two.workers)  # decode shrinks: the owner moves first, now
    assert two.owner_stream.name == "owner:rest36"
    released = next(i for i, op in enumerate(t.ops) if op == ("record", "decode_released", "owner:rest92"))
    assert released > last_decode
    assert two.sent == [UseSplit(Split(96, 36), after_decode=True)]
    [moved] = two.worker_boundary()
    assert two.worker_stream.name == "worker:group96" and t.waits_for("worker:group96", released)
    assert owner.moving  # until the worker's answer is read
    owner.worker_moved(moved.split)
    assert not owner.moving


def test_a_worker_that_dies_mid_move_leaves_decode_its_new_share_and_a_new_one_starts_whole():
    two = TwoProcesses()
    two.backend.apply(Split(96, 36), two.workers)
    two.owner.worker_moved(two.worker_boundary()[0].split)
    two.backend.apply(Split(40, 92), two.workers)
    assert two.owner.moving and two.owner_stream.name == "owner:rest36"
    two.sent.clear()  # the worker dies before reading its move
    two.owner.worker_replaced()
    assert not two.owner.moving and two.owner_stream.name == "owner:rest92"
    two.owner.worker_moved(Split(40, 92))  # a late answer of the dead worker changes nothing
    assert two.owner_stream.name == "owner:rest92"

    two.worker_ready = False  # a new worker, starting: on the whole device, with nothing to tell
    two.backend.apply(Split(132, 132), two.workers)
    assert two.sent == [] and not two.owner.moving and two.owner_stream.name == "owner:whole"


def test_green_contexts_default_to_the_most_even_split_and_start_workers_whole():
    assert hopper().even_split() == Split(64, 68)
    assert GreenContexts(device_sms=108, min_sms=4, step=2).even_split() == Split(54, 54)
    assert hopper().worker_start(Split(64, 68)) == WorkerStart(None) and hopper().cores_of("prefill") == []


def test_green_refuses_without_use_stream():
    backend = hopper()
    with pytest.raises(RuntimeError, match="use_stream"):
        backend.apply(Split(64, 68), fake_workers([], stream=False))
    assert backend.in_force is None


def test_green_rejects_bad_granularity():
    with pytest.raises(ValueError, match="granularity"):
        GreenContexts(device_sms=132, min_sms=0, step=8)


def test_the_device_split_refuses_under_mps_percentage(monkeypatch):
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "50")
    with pytest.raises(RuntimeError, match="overrides green-context"):
        sgl_kernel_device_split()(64, 68)


# --- imports without CUDA --------------------------------------------------------------------------

def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_gpu_backends_import_without_torch():
    # With torch made unimportable, both modules still import and the backends can be built.
    result = run_python(
        "import sys; sys.modules['torch'] = None\n"
        "import engine.partition.mps as m, engine.partition.green_contexts as g\n"
        "g.GreenContexts(132, 8, 8); m.MpsPrefillShare()\n"
        "print('ok')\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_gpu_backends_do_not_load_torch_at_import():
    result = run_python(
        "import sys\n"
        "import engine.partition.mps, engine.partition.green_contexts\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_menus_a_tuner_chooses_from_are_all_valid_splits():
    for backend in (MpsPrefillShare(), hopper()):
        for pair in backend.menu():
            backend.check(Split(*pair))
    assert len(hopper().menu()) == 16 and hopper().menu()[-1] == (132, 132)
