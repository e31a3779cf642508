"""The semi-PD paper's latency models, fitted online from the windows seen at different splits.

With x and y the prefill and decode compute shares (fractions of the device):
    TTFT(x) = a1 / (x - lam) + b1    lam = prefill load (M/M/1: busy share x compute share)
    TPOT(y) = a2 / y + b2
Fitted by least squares on the (1 / (x - lam), TTFT) and (1 / y, TPOT) points of recent windows.
With one distinct point, b = 0 (latency inversely proportional to the share). Windows in unified
mode (an engine's (units, units), each phase the whole device, taking turns) are not points of these curves: their latencies
include the other phase's stalls, which the curves of a split do not have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def fit_inverse(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares of value = a * f + b over (f, value); b = 0 when the f's do not differ.
    A fit that would make latency grow with more compute (a <= 0) falls back the same way."""
    fs = [f for f, _ in points]
    if len(points) >= 2 and max(fs) - min(fs) > 1e-9 * max(fs):
        n = len(points)
        mf, mv = sum(fs) / n, sum(v for _, v in points) / n
        var = sum((f - mf) ** 2 for f in fs)
        a = sum((f - mf) * (v - mv) for f, v in points) / var
        if a > 0:
            return a, mv - a * mf
    f, v = points[-1]
    return v / f, 0.0


@dataclass(frozen=True)
class LatencyModel:
    a1: float
    b1: float
    lam: float
    a2: float
    b2: float

    def ttft(self, x: float) -> float:
        return self.a1 / (x - self.lam) + self.b1 if x > self.lam else math.inf

    def tpot(self, y: float) -> float:
        return self.a2 / y + self.b2


def observe(state: dict, split: tuple[int, int], units: int, busy: float, ttft_p: float, tpot_p: float,
            history: int, unified: bool = False) -> LatencyModel:
    """Add this window's points to `state` (kept to the last `history`) and refit."""
    x, y = split[0] / units, split[1] / units
    lam = min(busy, 0.999) * x
    state["last_busy"] = busy
    curve_point = not (unified and tuple(split) == (units, units))
    if curve_point and not math.isnan(ttft_p):
        state["ttft_points"] = (state.get("ttft_points", []) + [(1 / max(x - lam, 1e-6), ttft_p)])[-history:]
    if curve_point and not math.isnan(tpot_p):
        state["tpot_points"] = (state.get("tpot_points", []) + [(1 / y, tpot_p)])[-history:]
    a1, b1 = fit_inverse(state.get("ttft_points") or [(1.0, 0.0)])
    a2, b2 = fit_inverse(state.get("tpot_points") or [(1.0, 0.0)])
    return LatencyModel(a1, b1, lam, a2, b2)


def window_fit(obs, params: dict, state: dict):
    """The shared first half of the model-based policies: collect a window (at least `window`
    ticks and `min_samples` first tokens), then take the
    `percentile` TTFT and TPOT and refit. Returns a reason to wait (str), or
    (TTFT percentile, TPOT percentile, fitted LatencyModel, TTFT histogram, TPOT histogram,
    prefill seconds per first token at the split in force). Updates `state` in place."""
    from policies.observation import collect_window, quantile

    window = collect_window(state, obs, params["window"], params["min_samples"])
    if window is None:
        return "collecting the window"
    ttft, tpot, busy, span_s = window
    if ttft.total < params["min_samples"]:
        return f"only {ttft.total} TTFT samples (< {params['min_samples']})"
    q = params["percentile"] / 100
    ttft_p, tpot_p = quantile(ttft, q), quantile(tpot, q)
    model = observe(state, obs.split, obs.units, busy, ttft_p, tpot_p, params["history"], obs.unified_available)
    return ttft_p, tpot_p, model, ttft, tpot, busy * span_s / ttft.total
