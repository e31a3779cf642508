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
hardware). The owner asks each worker to move (`Workers.use_stream(role, split)`, which returns
once that worker runs on its new stream); a worker moves at its next batch boundary after
`hand_over`, so its next batch starts after its last. The side that shrinks moves first
(`switch_order`): the two never run on the same SMs, even between the two moves.

Under MPS, CUDA_MPS_ACTIVE_THREAD_PERCENTAGE overrides green-context partitions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from engine.partition import InvalidSplit, Split, Workers

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
