"""GPU SMs per worker through CUDA green contexts, switched live by handing each worker a stream.

A green context owns a fixed set of SMs and cannot be resized, but work goes wherever the stream it
is launched on points, so a split is changed by pre-creating one green-context stream per SM count
and telling each worker which one to launch on (`Workers.use_stream`), with no restart. Streams
are created lazily, the first time a (role, SM count) is asked for, and kept for reuse.

Caveats, not verified on hardware:
- A CUDA stream belongs to one process: this backend must run in the process that launches the
  role's kernels (both roles in one process, as in SGLang's pdmux, or one backend per worker).
- The default factory carves each green context from the whole device on its own, so two contexts
  of 64 SMs may well land on the same SMs: shares that sum to at most the device's SMs are not
  thereby disjoint. Disjoint pairs need one split of the device into both groups (as
  `sgl_kernel.spatial.create_greenctx_stream_by_value` does); pass such a factory if that matters.
- Under MPS, CUDA_MPS_ACTIVE_THREAD_PERCENTAGE overrides green-context partitions.
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


def torch_green_stream_factory(device_id: int | None = None) -> Callable[[int], object]:
    """A factory making one stream on a new green context of `sms` SMs, via torch (not verified on
    hardware).

    Uses torch.cuda.green_contexts.GreenContext(num_sms=..., device_id=...).Stream(), present from
    torch 2.14 (the installed 2.14.1 has it; older releases had only create/set_context). torch is
    imported when the factory is first called, so importing this module needs neither torch nor a
    GPU. Each GreenContext is kept alive here: collecting one destroys its streams.
    """
    contexts: list[object] = []

    def create(sms: int) -> object:
        percent = os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
        if percent not in (None, "100"):
            raise RuntimeError(f"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={percent} overrides green-context "
                               "partitions: unset it (or set it to 100) to use green contexts")
        try:
            from torch.cuda.green_contexts import GreenContext
        except ImportError as error:
            raise RuntimeError(f"green contexts need torch.cuda.green_contexts.GreenContext "
                               f"(torch 2.14 or later): {error}") from error
        if not hasattr(GreenContext, "Stream"):
            raise RuntimeError("this torch's GreenContext has no Stream(): green contexts need "
                               "torch 2.14 or later")
        context = GreenContext(num_sms=sms, device_id=device_id)
        contexts.append(context)
        return context.Stream()

    return create


class GreenContexts:
    """SMs per worker, as SM counts (not percentages), e.g. 64,64 on a 132-SM H100.

    Counts rather than percentages because the hardware allocates whole groups of SMs: a percentage
    would be rounded silently, a count is either valid or refused with the valid range. Shares
    may overlap (their sum may exceed the device's SMs).
    """

    name = "green_contexts"
    unit = "SMs"

    def __init__(self, device_sms: int, min_sms: int, step: int,
                 factory: Callable[[int], object] | None = None):
        if not (1 <= step and 1 <= min_sms <= device_sms):
            raise ValueError(f"bad SM granularity: min {min_sms}, step {step}, device {device_sms} SMs")
        self.device_sms = device_sms
        self.min_sms = min_sms
        self.step = step
        self.factory = factory if factory is not None else torch_green_stream_factory()
        # Keyed by role too: two roles with equal counts must not share one stream, which would
        # serialise their kernels.
        self.streams: dict[tuple[str, int], object] = {}
        self.in_force: dict[str, int] = {}

    @classmethod
    def for_device(cls, device_id: int = 0) -> GreenContexts:
        """The backend for a CUDA device, its SM count and granularity read through torch (not
        verified on hardware)."""
        import torch

        props = torch.cuda.get_device_properties(device_id)
        granularity = sm_granularity(props.major)
        return cls(props.multi_processor_count, granularity.min_sms, granularity.step,
                   torch_green_stream_factory(device_id))

    def largest(self) -> int:
        return self.min_sms + (self.device_sms - self.min_sms) // self.step * self.step

    @property
    def units(self) -> int:
        return self.device_sms

    def valid_range(self) -> str:
        return (f"each share is a number of SMs from {self.min_sms} to {self.largest()} in steps of "
                f"{self.step} ({self.min_sms}, {self.min_sms + self.step}, ...; this GPU has "
                f"{self.device_sms} SMs)")

    def check(self, split: Split) -> None:
        for role in ROLES:
            value = getattr(split, role)
            if (isinstance(value, bool) or not isinstance(value, int)
                    or not self.min_sms <= value <= self.device_sms
                    or (value - self.min_sms) % self.step):
                raise InvalidSplit(f"{role} share {value!r} is not a valid green-context size: "
                                   f"{self.valid_range()}")

    def stream(self, role: str, sms: int) -> object:
        key = (role, sms)
        if key not in self.streams:
            self.streams[key] = self.factory(sms)
        return self.streams[key]

    def apply(self, split: Split, workers: Workers) -> dict:
        self.check(split)
        if workers.use_stream is None:
            raise RuntimeError("the green_contexts partition backend needs the engine to switch "
                               "streams (Workers.use_stream is None)")
        wanted = {"prefill": split.prefill, "decode": split.decode}
        # Create every stream first, so a failing factory leaves both workers as they were.
        streams = {role: self.stream(role, wanted[role]) for role in ROLES}
        for role in ROLES:
            workers.use_stream(role, streams[role])
            self.in_force[role] = wanted[role]
        return {"sms": dict(self.in_force), "device_sms": self.device_sms}
