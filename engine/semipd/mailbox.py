"""The per-step hand-off between the owner and the prefill worker, without pickling tensors.

A mailbox is a buffer in unified storage that both processes map. The sender copies every tensor
of a message into it and puts a TensorRef (offset, shape, dtype) in its place, so what crosses the
socket is small metadata; the receiver turns the refs back into views of its own mapping. A
mailbox holds one message at a time: the owner writes a batch only when the worker has answered
the previous one, and reads (copies out) the worker's answer before sending the next batch.

With the IPC storage on a GPU the buffer is the owner's CUDA allocation, opened by the worker
through CUDA IPC, and interprocess events (cuda_ipc_storage.StepOrder) order the sender's copy
before the receiver's read; the interface (`pack`, `unpack`) is the same.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

ALIGN = 64  # bytes: every tensor starts aligned, so a uint8 slice can be viewed as any dtype


@dataclass(frozen=True)
class TensorRef:
    offset: int
    shape: tuple[int, ...]
    dtype: str  # the torch dtype's name, e.g. "int64"


class Mailbox:
    def __init__(self, buffer: torch.Tensor, name: str = "mailbox"):
        if buffer.dtype != torch.uint8 or buffer.dim() != 1:
            raise ValueError(f"a mailbox is a 1-D uint8 buffer, got {buffer.dtype} {tuple(buffer.shape)}")
        self.buffer, self.name = buffer, name
        self.overflowed = False

    @property
    def capacity(self) -> int:
        return self.buffer.numel()

    def pack(self, message):
        """A shallow copy of `message` whose tensor attributes (and tensors in list or tuple
        attributes) are copied into the mailbox and replaced by TensorRefs. A tensor that does
        not fit stays in the message (pickled: correct, slower) and is logged once."""
        packed = copy.copy(message)
        cursor = 0

        def put(tensor: torch.Tensor):
            nonlocal cursor
            tensor = tensor.detach()
            if not tensor.is_contiguous():
                tensor = tensor.contiguous()
            nbytes = tensor.numel() * tensor.element_size()
            if cursor + nbytes > self.capacity:
                if not self.overflowed:
                    self.overflowed = True
                    logger.warning("%s: a %d-byte tensor does not fit in its %d bytes; sent inline",
                                   self.name, nbytes, self.capacity)
                return tensor
            ref = TensorRef(cursor, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
            if nbytes:
                self.buffer[cursor:cursor + nbytes].view(tensor.dtype).copy_(tensor.reshape(-1))
            cursor += -(-nbytes // ALIGN) * ALIGN
            return ref

        for name, value in vars(packed).items():
            if isinstance(value, torch.Tensor):
                setattr(packed, name, put(value))
            elif isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
                setattr(packed, name, type(value)(put(v) if isinstance(v, torch.Tensor) else v for v in value))
        return packed

    def view(self, ref: TensorRef) -> torch.Tensor:
        dtype = getattr(torch, ref.dtype)
        numel = 1
        for dim in ref.shape:
            numel *= dim
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        return self.buffer[ref.offset:ref.offset + nbytes].view(dtype).view(ref.shape)

    def unpack(self, message, copy_out: bool = False):
        """`message` with its TensorRefs replaced, in place, by views of the mailbox (or copies,
        when the caller keeps them past the next message)."""
        for name, value in vars(message).items():
            if isinstance(value, TensorRef):
                setattr(message, name, self._get(value, copy_out))
            elif isinstance(value, (list, tuple)) and any(isinstance(v, TensorRef) for v in value):
                setattr(message, name, type(value)(self._get(v, copy_out) if isinstance(v, TensorRef) else v
                                                   for v in value))
        return message

    def _get(self, ref: TensorRef, copy_out: bool) -> torch.Tensor:
        view = self.view(ref)
        return view.clone() if copy_out else view
