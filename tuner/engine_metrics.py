"""Reading the engine's Prometheus metrics: parse the text format, and turn two snapshots into
one window's Observation for a policy (histogram deltas, busy shares, queues).

Counters and histograms are cumulative; a window is the difference of two snapshots. When a
counter goes down the engine restarted: the later snapshot alone is the window (as Prometheus's
rate() treats resets).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

from contract import QUEUE_LENGTH, STEP_TIME, TPOT, TTFT, WORKERS
from policies import Histogram, Observation

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*')


class MetricsError(ValueError):
    pass


@dataclass(frozen=True)
class Snapshot:
    time_s: float
    samples: dict  # name -> [(labels dict, value)]


def parse(text: str, at: float | None = None) -> Snapshot:
    """Parse Prometheus text exposition; MetricsError names the first line that is not."""
    samples: dict[str, list] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            raise MetricsError(f"line {number} is not a Prometheus sample: {line[:80]!r}")
        name, _, labels, value, _ = match.groups()
        try:
            number_value = float(value)
        except ValueError:
            raise MetricsError(f"line {number}: value {value!r} is not a number") from None
        samples.setdefault(name, []).append((dict(_LABEL.findall(labels or "")), number_value))
    return Snapshot(time.time() if at is None else at, samples)


def total(snap: Snapshot, name: str, **labels) -> float:
    return sum(v for lab, v in snap.samples.get(name, ()) if all(lab.get(k) == w for k, w in labels.items()))


def cumulative_buckets(snap: Snapshot, name: str) -> dict[float, float]:
    """le -> cumulative count, summed over every other label."""
    out: dict[float, float] = {}
    for labels, value in snap.samples.get(name + "_bucket", ()):
        le = float(labels.get("le", "nan"))
        if not math.isnan(le):
            out[le] = out.get(le, 0.0) + value
    return out


def window_histogram(before: Snapshot | None, after: Snapshot, name: str) -> Histogram:
    """The histogram of samples observed between two snapshots (counts per bucket)."""
    now = cumulative_buckets(after, name)
    old = cumulative_buckets(before, name) if before is not None else {}
    if any(now.get(le, 0.0) < count for le, count in old.items()):
        old = {}  # counters went down: the engine restarted
    bounds = sorted(now)
    cumulative = [now[b] - old.get(b, 0.0) for b in bounds]
    finite = [b for b in bounds if math.isfinite(b)]
    counts, previous = [], 0.0
    for c in cumulative:
        counts.append(max(0, round(c - previous)))
        previous = c
    if len(finite) == len(bounds):  # no +Inf bucket given
        counts.append(0)
    return Histogram(tuple(finite), tuple(counts))


def delta(before: Snapshot | None, after: Snapshot, name: str, **labels) -> float:
    now = total(after, name, **labels)
    old = total(before, name, **labels) if before is not None else 0.0
    return now - old if now >= old else now


def observe(before: Snapshot | None, after: Snapshot, split: tuple[int, int], units: int,
            ttft_slo_s: float, tpot_slo_s: float, unified_available: bool = False) -> Observation:
    """One window of an engine's metrics, as policies see it."""
    span = max(1e-6, after.time_s - before.time_s) if before is not None else 1.0
    ttft = window_histogram(before, after, TTFT)
    busy = {w: min(1.0, delta(before, after, STEP_TIME + "_sum", worker=w) / span) for w in WORKERS}
    return Observation(
        time_s=after.time_s, window_s=span, split=tuple(split), units=units,
        ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s, ttft=ttft, tpot=window_histogram(before, after, TPOT),
        arrival_rate=ttft.total / span, prefill_busy=busy["prefill"], decode_busy=busy["decode"],
        waiting=int(total(after, QUEUE_LENGTH, worker="prefill")),
        running=int(total(after, QUEUE_LENGTH, worker="decode")), unified_available=unified_available)
