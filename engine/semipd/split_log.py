"""A split change as both semi-PD owners (CPU workers, GPU pdmux) take and record it."""

from __future__ import annotations

import time
from collections import deque

from engine.partition import Split

HISTORY_RECORDS = 10_000


def new_history() -> deque:
    """The split history an owner keeps (the newest HISTORY_RECORDS changes)."""
    return deque(maxlen=HISTORY_RECORDS)


def requested_split(request: dict, partition) -> Split:
    """The split of a set_split request; InvalidSplit naming the valid range if the partition cannot take it."""
    split = Split(request.get("prefill"), request.get("decode"))
    partition.check(split)
    return split


def log_split(history, metrics, old: Split | None, new: Split, who: str, switch_s: float, **fields) -> dict:
    """Append the change to `history` and the metrics; returns its record."""
    record = {"time": time.time(), "old": str(old) if old else None, "new": str(new), "who": who,
              "switch_ms": switch_s * 1e3, **fields}
    history.append(record)
    metrics.record_split(new.prefill, new.decode)
    if old is not None:
        metrics.record_switch(switch_s)
    return record
