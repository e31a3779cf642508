"""The prefill hand-off's mailbox: tensors travel through shared memory, metadata through pickle."""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import torch

from engine.semipd.mailbox import ALIGN, Mailbox, TensorRef
from engine.semipd.shared_storage import SharedStorage


@dataclass
class Message:
    ids: torch.Tensor
    positions: torch.Tensor
    lens_cpu: list
    parts: tuple
    mode: str
    nothing: object = None


def message(tokens: int) -> Message:
    return Message(torch.arange(tokens, dtype=torch.int64), torch.arange(tokens, dtype=torch.int32)[::2],
                   [tokens], (torch.ones(3, dtype=torch.bfloat16), 7), "extend")


def test_round_trip_through_two_mappings_of_one_file(tmp_path):
    owner = SharedStorage(tmp_path, create=True)
    worker = SharedStorage(tmp_path, create=False)
    send = Mailbox(owner.tensor("box", (1 << 20,), torch.uint8))
    receive = Mailbox(worker.tensor("box", (1 << 20,), torch.uint8))
    original = message(1000)
    wire = pickle.dumps(send.pack(original))
    got = receive.unpack(pickle.loads(wire))
    assert torch.equal(got.ids, original.ids) and torch.equal(got.positions, original.positions)
    assert got.parts[1] == 7 and torch.equal(got.parts[0], original.parts[0]) and got.parts[0].dtype == torch.bfloat16
    assert got.lens_cpu == [1000] and got.mode == "extend" and got.nothing is None
    assert isinstance(original.ids, torch.Tensor)  # the sender's message is left as it was
    # metadata only: the size on the socket does not grow with the tokens
    assert len(wire) < 1024 and abs(len(pickle.dumps(send.pack(message(10_000)))) - len(wire)) < 32


def test_refs_are_aligned_and_copies_survive_the_next_message(tmp_path):
    box = Mailbox(SharedStorage(tmp_path, create=True).tensor("box", (4096,), torch.uint8))
    packed = box.pack(message(5))
    refs = [packed.ids, packed.positions, packed.parts[0]]
    assert all(isinstance(r, TensorRef) and r.offset % ALIGN == 0 for r in refs)
    kept = box.unpack(packed, copy_out=True)
    box.pack(Message(torch.full((5,), 9), torch.zeros(3, dtype=torch.int32), [], (), "decode"))
    assert kept.ids.tolist() == [0, 1, 2, 3, 4]


def test_a_tensor_that_does_not_fit_travels_inline(tmp_path):
    box = Mailbox(SharedStorage(tmp_path, create=True).tensor("box", (256,), torch.uint8))
    packed = box.pack(message(100))  # 800 bytes of ids cannot fit in 256
    assert isinstance(packed.ids, torch.Tensor) and box.overflowed
    assert torch.equal(box.unpack(pickle.loads(pickle.dumps(packed))).ids, torch.arange(100))
