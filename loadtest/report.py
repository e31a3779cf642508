"""Reports over request records: latency percentiles, SLO attainment, goodput.

Definitions (as SGLang's bench_serving and the semi-PD paper use them):
- TTFT: time to the first output token; TPOT: (e2e - ttft) / (output tokens - 1); ITL: the gaps
  between successive tokens.
- Joint SLO attainment: the share of ALL sent requests (failed ones count as misses) whose TTFT
  and TPOT both meet their SLOs. A one-token output has no TPOT and meets it trivially.
- Goodput: the highest request rate whose attainment is at least the target (0.9), interpolated
  linearly between the measured rates that bracket the target.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np

PERCENTILES = (50, 90, 99)


def percentile(values, q: float) -> float:
    values = [v for v in values if v is not None]
    return float(np.percentile(values, q)) if values else float("nan")


def _stats(name: str, values) -> dict:
    values = [v for v in values if v is not None]
    out = {f"{name}_mean_s": float(np.mean(values)) if values else float("nan")}
    for q in PERCENTILES:
        out[f"{name}_p{q}_s"] = percentile(values, q)
    return out


def meets(record, ttft_slo_s: float, tpot_slo_s: float) -> tuple[bool, bool]:
    if not record.ok:
        return False, False
    tpot = record.tpot_s
    return record.ttft_s <= ttft_slo_s, tpot is None or tpot <= tpot_slo_s


def summarize(records, ttft_slo_s: float | None = None, tpot_slo_s: float | None = None,
              duration_s: float | None = None) -> dict:
    ok = [r for r in records if r.ok]
    itls = [b - a for r in ok for a, b in zip(r.token_times_s, r.token_times_s[1:])]
    out = {"requests": len(records), "completed": len(ok), "failed": len(records) - len(ok)}
    out |= _stats("ttft", [r.ttft_s for r in ok]) | _stats("tpot", [r.tpot_s for r in ok])
    out |= _stats("itl", itls) | _stats("e2e", [r.e2e_s for r in ok])
    if duration_s:
        out["duration_s"] = duration_s
        out["throughput_rps"] = len(ok) / duration_s
        out["output_tokens_per_s"] = sum(r.output_len for r in ok) / duration_s
    if ttft_slo_s is not None and tpot_slo_s is not None and records:
        both = [meets(r, ttft_slo_s, tpot_slo_s) for r in records]
        out["slo_attainment"] = sum(t and p for t, p in both) / len(records)
        out["ttft_attainment"] = sum(t for t, _ in both) / len(records)
        out["tpot_attainment"] = sum(p for _, p in both) / len(records)
    return out


def goodput(attainment_by_rate: dict[float, float], target: float = 0.9) -> float:
    """Highest rate with attainment >= target, interpolated between bracketing measured rates;
    0.0 if even the lowest rate misses, the highest rate if none misses."""
    rates = sorted(attainment_by_rate)
    if not rates or attainment_by_rate[rates[0]] < target:
        return 0.0
    best = rates[0]
    for low, high in zip(rates, rates[1:]):
        a_low, a_high = attainment_by_rate[low], attainment_by_rate[high]
        if a_high >= target:
            best = high
            continue
        if a_low >= target:
            # attainment falls below the target somewhere in (low, high): interpolate
            best = low + (high - low) * (a_low - target) / (a_low - a_high)
        break
    return best


def write_records(path, records, **extra) -> None:
    """One JSON line per request (with the fields given in `extra`, e.g. the rate)."""
    with open(path, "a") as f:
        for record in records:
            f.write(json.dumps({**extra, **asdict(record), "tpot_s": record.tpot_s}) + "\n")


def bisect_goodput(attainment_at, low: float, high: float, target: float = 0.9, iterations: int = 7) -> float:
    """Goodput by bisection over the rate: `attainment_at(rate)` -> attainment. 0.0 if `low`
    already misses; `high` if even it meets the target."""
    if attainment_at(low) < target:
        return 0.0
    if attainment_at(high) >= target:
        return high
    for _ in range(iterations):
        middle = (low + high) / 2
        low, high = (middle, high) if attainment_at(middle) >= target else (low, middle)
    return low
