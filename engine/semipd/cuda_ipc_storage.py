"""The pieces of the GPU storage for two semi-PD processes (the semi-PD paper's design): a manifest
of the owner's tensors that the prefill worker opens in place through CUDA IPC, and interprocess
events that order each process's writes before the other's reads (`StepOrder`). The storage object
built from them is engine/semipd/ipc_storage.py.

The manifest lists every tensor the owner shares, in a fixed order: its name, shape, dtype and
torch's IPC reduction (on CUDA a `cudaIpcMemHandle` and an offset into its allocation; the same
code shares CPU tensors through shared memory, which is how it runs on CPU). The worker opens
each tensor where the owner keeps it, so weights, KV and the request table exist once on the
device. A name, shape, dtype or order that differs is an error naming the first difference: a
worker built with other flags must not run on memory it misreads.

Legacy CUDA IPC cannot share every allocation: `refusals` names the settings that rule it out
(expandable segments, the memory saver, custom memory pools), each by its flag. Not verified on
hardware: no GPU has run this file.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from typing import Callable, Iterable

import torch
import torch.multiprocessing  # registers torch's tensor reductions with ForkingPickler
from torch.multiprocessing.reductions import reduce_tensor

from engine.partition.green_contexts import MoveEvents
from engine.semipd.shared_storage import StorageMismatch


# SGLang flags whose allocations come from a custom pool legacy CUDA IPC cannot open.
CUSTOM_POOLS = {"--enable-symm-mem": "NCCL's symmetric memory pool (virtual-memory mapped)",
                "--enable-torch-symm-mem": "torch's symmetric memory pool (virtual-memory mapped)",
                "--enable-unified-memory": "managed (unified) memory"}


@dataclass(frozen=True)
class ManifestEntry:
    name: str
    shape: tuple[int, ...]
    dtype: str
    handle: tuple  # torch's reduction: (rebuild function, its arguments)


def refusals(server_args, environ: dict[str, str]) -> list[str]:
    """What makes the owner's memory unshareable through legacy CUDA IPC, each naming its flag."""
    found = []
    if "expandable_segments:true" in environ.get("PYTORCH_CUDA_ALLOC_CONF", "").replace(" ", "").lower():
        found.append("PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True: memory mapped in segments cannot be "
                     "opened by cudaIpcOpenMemHandle; unset it")
    if getattr(server_args, "enable_memory_saver", False):
        found.append("--enable-memory-saver: its allocations are virtual memory that CUDA IPC cannot share")
    for flag, what in CUSTOM_POOLS.items():
        if getattr(server_args, flag.removeprefix("--").replace("-", "_"), False):
            found.append(f"{flag}: {what}, which cudaIpcGetMemHandle cannot share")
    return found


def export_manifest(named: Iterable[tuple[str, torch.Tensor]],
                    reduce: Callable[[torch.Tensor], tuple] = reduce_tensor) -> list[ManifestEntry]:
    """The owner's side: one entry per tensor, in the order given."""
    entries, seen = [], set()
    for name, tensor in named:
        if name in seen:
            raise ValueError(f"tensor {name!r} twice in the manifest")
        seen.add(name)
        entries.append(ManifestEntry(name, tuple(tensor.shape), str(tensor.dtype), reduce(tensor)))
    return entries


def rebuild_handle(handle: tuple) -> torch.Tensor:
    return handle[0](*handle[1])


def check_entry(position: int, entry: ManifestEntry, name: str, shape, dtype) -> None:
    """StorageMismatch unless the owner's `position`-th tensor is the one the worker wants there."""
    want = (name, tuple(int(d) for d in shape), str(dtype))
    have = (entry.name, entry.shape, entry.dtype)
    if have != want:
        raise StorageMismatch(f"shared tensor {position}: the owner made {have}, this worker wants {want} "
                              "(started with other model or memory flags?)")


def check_count(shared: int, wanted: int) -> None:
    if shared != wanted:
        more = "more" if shared > wanted else "fewer"
        raise StorageMismatch(f"the owner shares {shared} tensors, this worker wants {wanted}: the owner made {more}")


def open_entry(entry: ManifestEntry, rebuild: Callable[[tuple], torch.Tensor] = rebuild_handle) -> torch.Tensor:
    tensor = rebuild(entry.handle)
    if tuple(tensor.shape) != entry.shape or str(tensor.dtype) != entry.dtype:
        raise StorageMismatch(f"shared tensor {entry.name} opened as {tuple(tensor.shape)} {tensor.dtype}, "
                              f"not {entry.shape} {entry.dtype}")
    return tensor


def attach(manifest: list[ManifestEntry], wanted: list[tuple[str, tuple[int, ...], torch.dtype]],
           rebuild: Callable[[tuple], torch.Tensor] = rebuild_handle) -> dict[str, torch.Tensor]:
    """The worker's side: every tensor it needs, opened in place, after checking that the manifest
    lists exactly these, in this order, with these shapes and dtypes."""
    for position, (entry, (name, shape, dtype)) in enumerate(zip(manifest, wanted)):
        check_entry(position, entry, name, shape, dtype)
    check_count(len(manifest), len(wanted))
    return {entry.name: open_entry(entry, rebuild) for entry in manifest}


def dumps(manifest) -> bytes:
    """The manifest (or anything holding one) as bytes for the worker (torch's reductions pickle
    the handles)."""
    buffer = io.BytesIO()
    ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(manifest)
    return buffer.getvalue()


def loads(data: bytes):
    return pickle.loads(data)


class SlotEvents:
    """Interprocess events, one per pipeline slot, that make one process's reads of a slot wait for
    the other's writes to it: a message on the socket orders the two hosts, not the two processes'
    streams. The writer records the slot's event on its stream after launching its writes; the
    reader makes its stream wait on the event before launching its reads. A slot is written again
    only after it was read: the mailbox protocol's rule (batch `seq` takes slot `seq % depth`, sent
    only once the slot's previous answer is read)."""

    def __init__(self, events: list):
        self.events = events

    def written(self, slot: int, stream) -> None:
        self.events[slot].record(stream)

    def before_reading(self, slot: int, stream) -> None:
        stream.wait_event(self.events[slot])


@dataclass
class StepOrder:
    """The interprocess events of the two processes on a GPU: the owner's batch tensors (mailbox)
    written before the worker's forward reads them; the worker's KV and logits written before the
    owner reads them; and a green-context move's release of SMs before the other side takes them
    (engine/partition/green_contexts.py). The owner creates the events and hands the worker their
    IPC handles at its start."""

    batch: SlotEvents
    result: SlotEvents
    moves: MoveEvents

    @classmethod
    def new(cls, slots: int, event: Callable[[], object] | None = None) -> "StepOrder":
        event = event or (lambda: torch.cuda.Event(interprocess=True))
        return cls(SlotEvents([event() for _ in range(slots)]), SlotEvents([event() for _ in range(slots)]),
                   MoveEvents(event(), event()))

    def handles(self) -> tuple[list, list, list]:
        moves = [self.moves.decode_released, self.moves.prefill_released]
        return tuple([e.ipc_handle() for e in events] for events in (self.batch.events, self.result.events, moves))

    @classmethod
    def open(cls, handles: tuple[list, list, list], opener: Callable[[object], object] | None = None) -> "StepOrder":
        opener = opener or (lambda handle: torch.cuda.Event.from_ipc_handle(torch.cuda.current_device(), handle))
        batch, result, moves = ([opener(h) for h in group] for group in handles)
        return cls(SlotEvents(batch), SlotEvents(result), MoveEvents(*moves))
