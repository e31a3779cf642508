"""GPU SMs per worker through CUDA green contexts, for the two worker processes of the semi-PD
design (instead of MPS percentages): a new split without a restart.

A split (P, D) is one split of the device into a green context of P SMs for prefill and its
remainder, D = SMs - P, for decode, made by one call (`sgl_kernel.spatial.
create_greenctx_stream_by_value`): the two never share an SM, which two contexts carved from the
whole device one at a time do not ensure. (SMs, SMs) is the overlapping split: each worker on a
plain stream of the whole device.

A CUDA stream belongs to its process, so nothing crosses between workers but the split: each
worker keeps a `StreamTable` and makes the same device split the first time it is asked for
(the same call in each process is assumed to give the group the same SMs: not verified on
hardware). The side that shrinks moves first (`switch_order`), so the two never run on the same
SMs, even between the two moves, and neither process waits on the host for the other:

- decode shrinks: the owner moves its own stream at once and records `decode_released` on the old
  one; the worker, told to move (`UseSplit`), makes its new stream wait on that event.
- prefill shrinks: the owner tells the worker, which moves at its next batch boundary (it reads
  the message after its current batch), records `prefill_released` on its old stream and answers
  `Moved`; only then does the owner move, its new stream waiting on that event. Decode runs on its
  old share meanwhile, and a further split waits (`OwnerStreams.moving`).

Correctness never depends on this: each prefill step's KV is ordered by its own events
(engine/semipd/cuda_ipc_storage.py `StepOrder`); the moves only keep the shares apart.
Under MPS, CUDA_MPS_ACTIVE_THREAD_PERCENTAGE overrides green-context partitions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from engine.partition import InvalidSplit, Split, Workers, WorkerStart

ROLES = ("prefill", "decode")


@dataclass(frozen=True)
class SmGranularity:
    min_sms: int  # the smallest green context
    step: int  # green contexts take SMs in multiples of this


def sm_granularity(major: int) -> SmGranularity:
    """Green-context SM granularity by compute capability major version (CUDA driver API docs)."""
    if major >= 9:  # Hopper and later
        return SmGranularity(8, 8)
    if major == 8:  # Ampere, Ada
        return SmGranularity(4, 2)
    if major == 7:
        return SmGranularity(2, 2)
    raise ValueError(f"green contexts need compute capability 7.0 or later (this GPU is {major}.x)")


def valid_prefill_sms(device_sms: int, granularity: SmGranularity) -> list[int]:
    """Green-context sizes for prefill that leave decode at least the smallest group."""
    return list(range(granularity.min_sms, device_sms - granularity.min_sms + 1, granularity.step))


def sgl_kernel_device_split(device_id: int = 0) -> Callable[[int, int], tuple[object, object]]:
    """Streams on one split of the device: (a green context of `prefill_sms`, its remainder of
    `decode_sms`), through sgl_kernel (SGLang's own green-context call; imported when first used,
    so importing this module needs neither torch nor a GPU)."""

    def split(prefill_sms: int, decode_sms: int) -> tuple[object, object]:
        percent = os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
        if percent not in (None, "100"):
            raise RuntimeError(f"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={percent} overrides green-context "
                               "partitions: unset it (or set it to 100) to use green contexts")
        from sgl_kernel import spatial

        return tuple(spatial.create_greenctx_stream_by_value(prefill_sms, decode_sms, device_id))

    return split


def device_stream_table(device_id: int = 0) -> "StreamTable":
    """This process's stream table on a CUDA device (not verified on hardware)."""
    import torch

    sms = torch.cuda.get_device_properties(device_id).multi_processor_count
    return StreamTable(sms, sgl_kernel_device_split(device_id), torch.cuda.Stream)


class StreamTable:
    """One worker process's streams: the device split of each split asked for, made once."""

    def __init__(self, device_sms: int, split_device: Callable[[int, int], tuple[object, object]],
                 whole_device: Callable[[], object]):
        self.device_sms = device_sms
        self.split_device, self.whole_device = split_device, whole_device
        self.splits: dict[int, tuple[object, object]] = {}  # prefill SMs -> (its stream, the remainder's)
        self.whole: dict[str, object] = {}

    def stream(self, role: str, split: Split) -> object:
        if split.prefill == split.decode == self.device_sms:
            if role not in self.whole:
                self.whole[role] = self.whole_device()
            return self.whole[role]
        if split.prefill not in self.splits:
            self.splits[split.prefill] = self.split_device(split.prefill, split.decode)
        return self.splits[split.prefill][ROLES.index(role)]


def hand_over(old_stream, new_stream, make_event: Callable[[], object]) -> None:
    """Work queued on `new_stream` from now on starts after what `old_stream` holds."""
    if old_stream is None or old_stream is new_stream:
        return
    event = make_event()
    event.record(old_stream)
    new_stream.wait_event(event)


@dataclass(frozen=True)
class UseSplit:
    """The owner to the prefill worker: run on `split`'s prefill stream from your next batch on;
    `after_decode`: decode gave up SMs first, so wait for its `decode_released`."""

    split: Split
    after_decode: bool


@dataclass(frozen=True)
class Moved:
    """The prefill worker to the owner: it runs on `split`'s stream and recorded `prefill_released`."""

    split: Split


@dataclass
class MoveEvents:
    """The two interprocess events of a move, created by the owner (handles to the worker)."""

    decode_released: object
    prefill_released: object


def worker_move(message: UseSplit, table: StreamTable, current: object, events: MoveEvents,
                make_event: Callable[[], object]) -> tuple[object, Moved]:
    """The prefill worker's side, at a batch boundary: its stream for `message.split`, queued after
    its old stream's work (and after decode's release when decode moved first); its old stream's
    end recorded for the owner. Returns the stream to make current and the answer."""
    new = table.stream("prefill", message.split)
    if message.after_decode:
        new.wait_event(events.decode_released)
    hand_over(current, new, make_event)
    if current is not None:
        events.prefill_released.record(current)
    return new, Moved(message.split)


class OwnerStreams:
    """The decode owner's side of green-context moves: `use_stream` is its `Workers.use_stream`.

    `events()` are the current worker's MoveEvents (each worker gets its own at its start);
    `tell_worker(UseSplit)` sends the worker its move and returns False when no worker is ready to
    take it (one starting after a death begins on the whole device: nothing to move)."""

    def __init__(self, table: StreamTable, current: Callable[[], object], set_current: Callable[[object], None],
                 make_event: Callable[[], object], events: Callable[[], MoveEvents],
                 tell_worker: Callable[[UseSplit], bool]):
        self.table, self.current, self.set_current = table, current, set_current
        self.make_event, self.events, self.tell_worker = make_event, events, tell_worker
        self.decode_split: Split | None = None  # the split whose decode stream the owner runs on
        self.awaiting: Split | None = None  # the worker was told to move here and has not answered
        self.decode_deferred = False  # decode moves to `awaiting` once the worker answers

    @property
    def moving(self) -> bool:
        return self.awaiting is not None

    def use_stream(self, role: str, split: Split) -> None:
        if role == "decode":
            if self.awaiting == split:
                self.decode_deferred = True
            else:
                self._move_decode(split, after_prefill=False)
            return
        after_decode = self.decode_split == split
        if self.tell_worker(UseSplit(split, after_decode)):
            self.awaiting = split

    def worker_moved(self, split: Split) -> None:
        """The worker answered `Moved(split)`: decode takes its share now if it waited for this."""
        if split != self.awaiting:
            return  # an answer of a worker since replaced, or already settled
        self.awaiting = None
        if self.decode_deferred:
            self.decode_deferred = False
            self._move_decode(split, after_prefill=True)

    def worker_replaced(self) -> None:
        """The worker died: no answer will come; decode takes the share it waited for."""
        split, self.awaiting = self.awaiting, None
        if self.decode_deferred:  # (only ever set while awaiting a move)
            self.decode_deferred = False
            self._move_decode(split, after_prefill=False)

    def _move_decode(self, split: Split, after_prefill: bool) -> None:
        old, new = self.current(), self.table.stream("decode", split)
        if after_prefill:
            new.wait_event(self.events().prefill_released)
        hand_over(old, new, self.make_event)
        self.events().decode_released.record(old)
        self.set_current(new)
        self.decode_split = split


def switch_order(old: Split | None, new: Split) -> list[str]:
    """The roles whose share changes, the shrinking one first."""
    if old is None:
        return list(ROLES)
    changed = [role for role in ROLES if getattr(old, role) != getattr(new, role)]
    return sorted(changed, key=lambda role: getattr(new, role) - getattr(old, role))


class GreenContexts:
    """SMs per worker, as SM counts (not percentages), e.g. 64,68 on a 132-SM H100.

    Counts rather than percentages because the hardware allocates whole groups of SMs: a percentage
    would be rounded silently, a count is either valid or refused with the valid range.
    """

    name = "green_contexts"
    unit = "SMs"

    def __init__(self, device_sms: int, min_sms: int, step: int):
        if not (1 <= step and 1 <= min_sms <= device_sms // 2):
            raise ValueError(f"bad SM granularity: min {min_sms}, step {step}, device {device_sms} SMs")
        self.device_sms = device_sms
        self.min_sms = min_sms
        self.step = step
        self.in_force: Split | None = None

    @classmethod
    def for_device(cls, device_id: int = 0) -> GreenContexts:
        """The backend for a CUDA device, its SM count and granularity read through torch (not
        verified on hardware)."""
        import torch

        props = torch.cuda.get_device_properties(device_id)
        granularity = sm_granularity(props.major)
        return cls(props.multi_processor_count, granularity.min_sms, granularity.step)

    def even_split(self) -> Split:
        """The default split: prefill's valid size nearest to half the SMs, decode the rest."""
        prefill = min(self.prefill_sizes(), key=lambda p: (abs(2 * p - self.device_sms), p))
        return Split(prefill, self.device_sms - prefill)

    def menu(self) -> list[tuple[int, int]]:
        """Every split this GPU takes (a tuner picks the nearest)."""
        return [(p, self.device_sms - p) for p in self.prefill_sizes()] + [(self.device_sms, self.device_sms)]

    def worker_start(self, split: Split) -> WorkerStart:
        """A worker starts on the whole device and is moved to its share once ready."""
        return WorkerStart(None)

    def cores_of(self, role: str) -> list[int]:
        return []

    def prefill_sizes(self) -> list[int]:
        return valid_prefill_sms(self.device_sms, SmGranularity(self.min_sms, self.step))

    @property
    def units(self) -> int:
        return self.device_sms

    def valid_range(self) -> str:
        return (f"prefill a number of SMs from {self.min_sms} to {self.prefill_sizes()[-1]} in steps of {self.step}, "
                f"decode the rest of this GPU's {self.device_sms} SMs (e.g. {self.min_sms},"
                f"{self.device_sms - self.min_sms}); or {self.device_sms},{self.device_sms}, both on the whole GPU")

    def check(self, split: Split) -> None:
        values = (split.prefill, split.decode)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise InvalidSplit(f"split {split.prefill!r},{split.decode!r} is not two SM counts: {self.valid_range()}")
        if split.prefill == split.decode == self.device_sms:
            return
        if split.prefill not in self.prefill_sizes() or split.decode != self.device_sms - split.prefill:
            raise InvalidSplit(f"split {split} is not a green-context split: {self.valid_range()}")

    def apply(self, split: Split, workers: Workers) -> dict:
        self.check(split)
        if workers.use_stream is None:
            raise RuntimeError("the green_contexts partition backend needs the engine to switch "
                               "streams (Workers.use_stream is None)")
        for role in switch_order(self.in_force, split):
            workers.use_stream(role, split)
        self.in_force = split
        return {"sms": {"prefill": split.prefill, "decode": split.decode}, "device_sms": self.device_sms}
