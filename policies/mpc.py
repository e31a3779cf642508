"""Our policy: model-predictive control over the paper's fitted latency models, with hysteresis.

Every `window` ticks it refits TTFT(x) and TPOT(y) (policies/latency_model.py), predicts the
p-th percentile of both for every candidate split, and picks the one whose worse latency, as a
fraction of its SLO, is smallest (minimax slack). Unlike Algorithm 1 it moves as far as the models
say in one decision, takes compute back from a phase with slack, and acts when both phases miss
(toward balance instead of keeping). Against oscillation: it moves only when the predicted gain
beats `hysteresis`, not while both phases already meet their SLOs with `comfort` to spare, and
waits `cooldown` windows after a move for the models to see the new split.
"""

from __future__ import annotations

import math

from policies.latency_model import window_fit
from policies.observation import Decision, Observation

DEFAULTS = {"percentile": 90, "window": 2, "min_samples": 10, "history": 12, "hysteresis": 0.1,
            "comfort": 0.8, "cooldown": 1, "max_move_pct": 40.0, "min_pct": 10.0, "grain_pct": 5.0,
            "overlap": 0}
SPACE = {"percentile": (50, 99, "int"), "window": (1, 20, "int"), "min_samples": (1, 500, "int"),
         "history": (2, 100, "int"), "hysteresis": (0.0, 0.5, "float"), "comfort": (0.3, 1.0, "float"),
         "cooldown": (0, 10, "int"), "max_move_pct": (5.0, 100.0, "float"), "min_pct": (1.0, 50.0, "float"),
         "grain_pct": (1.0, 25.0, "float"), "overlap": (0, 1, "int")}


def candidates(split: tuple[int, int], units: int, params: dict) -> list[tuple[int, int]]:
    grain = max(1, round(params["grain_pct"] * units / 100))
    floor = max(1, round(params["min_pct"] * units / 100))
    reach = max(grain, round(params["max_move_pct"] * units / 100))
    values = sorted(set(range(floor, units + 1, grain)) | {units})
    near = lambda v, now: abs(v - now) <= reach
    if params["overlap"]:
        return [(x, y) for x in values for y in values if near(x, split[0]) and near(y, split[1])]
    return [(x, units - x) for x in values if units - x >= floor and near(x, split[0])]


def decide(obs: Observation, params: dict, state: dict) -> Decision:
    state = dict(state)
    fitted = window_fit(obs, params, state)
    if isinstance(fitted, str):
        return Decision(None, fitted, state)
    ttft_p, tpot_p, model = fitted
    seen = f"p{params['percentile']} TTFT {ttft_p * 1e3:.0f} ms, TPOT {tpot_p * 1e3:.0f} ms"
    slack = lambda t, p: max(t / obs.ttft_slo_s, 0.0 if math.isnan(p) else p / obs.tpot_slo_s)
    now = slack(ttft_p, tpot_p)
    if state.get("cooldown", 0) > 0:
        state["cooldown"] -= 1
        return Decision(None, f"cooling down after a move ({seen})", state)
    if now <= params["comfort"]:
        return Decision(None, f"both SLOs met with room ({seen}): keep", state)

    units = obs.units
    predict = lambda s: slack(model.ttft(s[0] / units), model.tpot(s[1] / units) if not math.isnan(tpot_p) else math.nan)
    here = predict(obs.split)
    best = min(candidates(obs.split, units, params), key=lambda s: (predict(s), abs(s[0] - obs.split[0])))
    gain = predict(best)
    if best == tuple(obs.split) or not gain < here * (1 - params["hysteresis"]):
        return Decision(None, f"no split predicted clearly better ({seen}; worst/SLO {here:.2f} now, "
                              f"{gain:.2f} at best)", state)
    state["cooldown"] = params["cooldown"]
    return Decision(best, f"{seen}: predicted worst/SLO {here:.2f} -> {gain:.2f} at {best[0]},{best[1]}", state)
