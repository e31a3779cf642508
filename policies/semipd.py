"""The semi-PD paper's SLO-aware partitioning (Algorithm 1, arXiv 2504.19867 section 5).

Every `window` ticks: take the p-th percentile TTFT and TPOT of the window. If exactly one phase
misses its SLO, move compute to it step by step (at most `max_steps` steps of `step_pct` percent)
until its fitted latency model predicts the SLO is met; if both miss, or both meet, keep.
The models are the paper's, fitted online (policies/latency_model.py).
With `overlap` = 0 the shares partition the device (y = units - x); with 1 each may reach the
whole device (the paper's MPS percentages), and a phase already at 100% gains by the other
shrinking as far as the other's model says its SLO still holds.
"""

from __future__ import annotations

import math

from policies.latency_model import window_fit
from policies.observation import Decision, Observation

DEFAULTS = {"percentile": 90, "window": 3, "step_pct": 10.0, "max_steps": 3, "min_pct": 10.0,
            "tpot_margin": 1.1, "ttft_margin": 1.0, "min_samples": 10, "overlap": 0, "history": 12}
SPACE = {"percentile": (50, 99, "int"), "window": (1, 20, "int"), "step_pct": (1.0, 50.0, "float"),
         "max_steps": (1, 10, "int"), "min_pct": (1.0, 50.0, "float"), "tpot_margin": (0.8, 1.5, "float"),
         "ttft_margin": (0.8, 1.5, "float"), "min_samples": (1, 500, "int"), "overlap": (0, 1, "int"),
         "history": (2, 100, "int")}


def decide(obs: Observation, params: dict, state: dict) -> Decision:
    state = dict(state)
    fitted = window_fit(obs, params, state)
    if isinstance(fitted, str):
        return Decision(None, fitted, state)
    ttft_p, tpot_p, model = fitted[:3]
    units, (x, y) = obs.units, obs.split
    ttft_ok = lambda x_: model.ttft(x_ / units) * params["ttft_margin"] <= obs.ttft_slo_s
    tpot_ok = lambda y_: model.tpot(y_ / units) * params["tpot_margin"] <= obs.tpot_slo_s

    ttft_miss = ttft_p * params["ttft_margin"] > obs.ttft_slo_s
    tpot_miss = not math.isnan(tpot_p) and tpot_p * params["tpot_margin"] > obs.tpot_slo_s
    seen = f"p{params['percentile']} TTFT {ttft_p * 1e3:.0f} ms, TPOT {tpot_p * 1e3:.0f} ms"
    if ttft_miss == tpot_miss:
        return Decision(None, f"{'both miss' if ttft_miss else 'both meet'} ({seen}): keep", state)

    step = max(1, round(params["step_pct"] * units / 100))
    floor = max(1, round(params["min_pct"] * units / 100))
    # the phase that misses gets compute: (grow, shrink, its model, the other's model)
    grow, shrink, ok_grow, ok_shrink = (0, 1, ttft_ok, tpot_ok) if ttft_miss else (1, 0, tpot_ok, ttft_ok)
    split = [x, y]
    best = None
    for k in range(1, params["max_steps"] + 1):
        new = list(split)
        if params["overlap"] and split[grow] < units:
            new[grow] = min(units, split[grow] + k * step)
        else:
            new[shrink] = split[shrink] - k * step
            if not params["overlap"]:
                new[grow] = min(units - floor, split[grow] + k * step)
                new[shrink] = units - new[grow]
            if new[shrink] < floor:
                break
            if params["overlap"] and not ok_shrink(new[shrink]):
                break  # shrinking the other side further would break its SLO
        if new == split:
            break
        best = new
        if ok_grow(new[grow]):
            break
    phase = "TTFT" if ttft_miss else "TPOT"
    if best is None:
        return Decision(None, f"{phase} misses ({seen}) but the split cannot move further", state)
    return Decision(tuple(best), f"{phase} misses ({seen}): {x},{y} -> {best[0]},{best[1]}", state)
