"""What a policy sees each tick, and what it answers.

Latencies come as windowed histograms (bucket upper bounds and counts), because that is what the
engine's Prometheus histograms give the live tuner; the simulator builds the same from its samples.
Splits are in the engine's units: cores on CPU, percent of the SMs on GPU (`units` per device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Histogram:
    bounds: tuple[float, ...]  # upper bounds, increasing; the last bucket is +Inf (implicit)
    counts: tuple[int, ...]    # one count per bound plus the +Inf bucket (not cumulative)

    @property
    def total(self) -> int:
        return sum(self.counts)

    @classmethod
    def of(cls, samples, bounds: tuple[float, ...]) -> "Histogram":
        import bisect

        counts = [0] * (len(bounds) + 1)
        for s in samples:
            counts[bisect.bisect_left(bounds, s)] += 1
        return cls(tuple(bounds), tuple(counts))

    def share_at_most(self, limit: float) -> float:
        """Fraction of samples <= limit (linear inside the bucket that holds the limit)."""
        if not self.total:
            return float("nan")
        below, low = 0.0, 0.0
        for bound, count in zip(self.bounds + (math.inf,), self.counts):
            if limit >= bound:
                below += count
            else:
                if math.isfinite(bound) and limit > low:
                    below += count * (limit - low) / (bound - low)
                break
            low = bound
        return below / self.total


def quantile(hist: Histogram, q: float) -> float:
    """The q-quantile (0..1), interpolated inside its bucket as Prometheus's histogram_quantile
    does; NaN with no samples; the highest finite bound if it falls in the +Inf bucket."""
    total = hist.total
    if total == 0:
        return float("nan")
    rank, seen, low = q * total, 0, 0.0
    for bound, count in zip(hist.bounds, hist.counts):
        if count and seen + count >= rank:
            return low + (bound - low) * (rank - seen) / count
        seen += count
        low = bound
    return hist.bounds[-1] if hist.bounds else float("nan")


@dataclass(frozen=True)
class Observation:
    time_s: float                # end of the window
    window_s: float              # its length
    split: tuple[int, int]       # (prefill, decode) in force, in units
    units: int                   # what one device has: cores, or 100 (percent of SMs)
    ttft_slo_s: float
    tpot_slo_s: float
    ttft: Histogram              # requests whose first token came in the window
    tpot: Histogram              # requests that finished in the window
    arrival_rate: float = 0.0    # requests/s that arrived in the window
    prefill_busy: float = 0.0    # share of the window each worker spent in steps (0..1)
    decode_busy: float = 0.0
    waiting: int = 0             # requests queued for prefill at the end of the window
    running: int = 0             # requests decoding at the end of the window
    unified_available: bool = False  # the engine runs (units, units) as unified mode (SGLang's own loop)


@dataclass(frozen=True)
class Decision:
    split: tuple[int, int] | None  # None: keep the split in force
    reason: str
    state: dict


def collect_window(state: dict, obs: Observation, ticks: int, min_samples: int = 0):
    """Accumulate ticks into `state` until at least `ticks` have been seen and the window holds
    `min_samples` first tokens (or 10 x `ticks` passed: a quiet engine still gets decisions);
    then return the merged window as (TTFT histogram, TPOT histogram, mean prefill busy share,
    its length in seconds) and clear it, else None."""
    state["ticks"] = state.get("ticks", 0) + 1
    state["span"] = state.get("span", 0.0) + obs.window_s
    for key, hist in (("ttft", obs.ttft), ("tpot", obs.tpot)):
        state[key] = [a + b for a, b in zip(state[key], hist.counts)] if state.get(key) else list(hist.counts)
    state["busy"] = state.get("busy", 0.0) + obs.prefill_busy
    if state["ticks"] < ticks or (sum(state["ttft"]) < min_samples and state["ticks"] < 10 * ticks):
        return None
    ttft = Histogram(obs.ttft.bounds, tuple(state.pop("ttft")))
    tpot = Histogram(obs.tpot.bounds, tuple(state.pop("tpot")))
    return ttft, tpot, state.pop("busy") / state.pop("ticks"), state.pop("span")
