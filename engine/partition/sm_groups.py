"""GPU SMs per phase in one process, as SGLang's PD multiplexing (`--enable-pdmux`) runs them.

pdmux builds its stream groups once, at start: each group is one split of the device into a green
context of P SMs and the remainder of D = SMs - P (`sgl_kernel.spatial.create_greenctx_stream_by_value`),
so the two streams of a group never share an SM; a plain stream per phase takes the whole device
when the other phase is idle. Changing the split is choosing another group at the next batch
boundary: nothing is created or restarted. The split is therefore one of a menu fixed at start
(a few pairs: each group gets its own decode attention backend and, with CUDA graphs, its own
graphs), and a split outside it is refused with the menu.

Pure: no torch, no CUDA. engine/semipd/pdmux_owner.py hands the menu to SGLang and asks
`stream_index` which group to run on. Not verified on hardware.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.partition import InvalidSplit, Split, Workers
from engine.partition.green_contexts import SmGranularity, valid_prefill_sms

# Prefill's share of the SMs in the default menu (decode gets the rest): the semi-PD paper's
# searches ended between 30% and 80% prefill.
DEFAULT_PREFILL_FRACTIONS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass(frozen=True)
class SmMenu:
    device_sms: int
    pairs: tuple[tuple[int, int], ...]  # (prefill SMs, decode SMs), prefill's largest first (pdmux's order)

    def __post_init__(self):
        for prefill, decode in self.pairs:
            if prefill + decode != self.device_sms or min(prefill, decode) < 1:
                raise ValueError(f"SM pair {prefill},{decode} does not split a {self.device_sms}-SM device in two")

    @property
    def groups(self) -> int:
        """pdmux's stream groups: whole device to prefill, each pair, whole device to decode."""
        return len(self.pairs) + 2

    def describe(self) -> str:
        return ", ".join(f"{p},{d}" for p, d in self.pairs)


def sm_menu(device_sms: int, granularity: SmGranularity, fractions=DEFAULT_PREFILL_FRACTIONS,
            include: Split | None = None) -> SmMenu:
    """The menu: for each fraction the valid prefill size nearest to it, plus `include` (a split
    asked for at start) when it is a valid pair. Raises ValueError when the device cannot be split."""
    sizes = valid_prefill_sms(device_sms, granularity)
    if not sizes:
        raise ValueError(f"a {device_sms}-SM GPU cannot be split in two green contexts of at least "
                         f"{granularity.min_sms} SMs")
    chosen = {min(sizes, key=lambda p: (abs(p - f * device_sms), p)) for f in fractions}
    if include is not None and include.prefill in sizes and include.prefill + include.decode == device_sms:
        chosen.add(include.prefill)
    return SmMenu(device_sms, tuple((p, device_sms - p) for p in sorted(chosen, reverse=True)))


def stream_index(menu: SmMenu, split: Split, decoding: bool, prefilling: bool) -> int:
    """pdmux's stream group for this step: the split's pair when both phases run; the whole device
    for the only one that runs (as on CPU, an idle phase's share is not left idle)."""
    if decoding and prefilling:
        return 1 + menu.pairs.index((split.prefill, split.decode))
    if decoding:
        return menu.groups - 1
    return 0


class PdmuxSmGroups:
    """The partition backend of GPU semi-pd mode on pdmux: a split is a pair of the menu, in SMs."""

    name = "pdmux"
    unit = "SMs"

    def __init__(self, menu: SmMenu):
        self.menu = menu
        self.in_force: Split | None = None

    @property
    def units(self) -> int:
        return self.menu.device_sms

    def valid_range(self) -> str:
        return (f"one of the SM splits built at start (prefill,decode; together the device's "
                f"{self.menu.device_sms} SMs): {self.menu.describe()}")

    def check(self, split: Split) -> None:
        values = (split.prefill, split.decode)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values) or values not in self.menu.pairs:
            raise InvalidSplit(f"split {split.prefill!r},{split.decode!r} is not available: {self.valid_range()}")

    def apply(self, split: Split, workers: Workers) -> dict:
        """Recorded only: the scheduler moves to the split's stream group at its next batch
        boundary (when a prefill batch starts or ends, or decode empties)."""
        self.check(split)
        self.in_force = split
        return {"sms": {"prefill": split.prefill, "decode": split.decode}, "device_sms": self.menu.device_sms}
