"""Our policy: model-predictive control of SLO attainment, with hysteresis.

Every window it refits the paper's latency models TTFT(x) and TPOT(y) (policies/latency_model.py)
and, for every candidate split, predicts the share of requests that would meet each SLO: the
window's own TTFT and TPOT histograms, scaled by the models' ratio between the candidate and the
split in force. It picks the split with the highest predicted joint attainment (the smaller of
the two). Unlike Algorithm 1 it aims at the tail that attainment counts rather than at one
percentile, moves as far as the models say in one decision, and takes compute back from a phase
with slack; when both phases miss it moves only if some split is predicted to serve more requests
within both SLOs. Against oscillation: it moves only when the predicted gain
beats `hysteresis`, not while both attainments are above `comfort`, and waits `cooldown` windows
after a move for the models to see the new split. When the models see no gain but exactly one
phase misses for `probe_after` windows running (models fitted in another regime), it probes one
step toward that phase.

With `unified`, and an engine that has it, the split (units, units) is a candidate too: unified mode, each phase the whole
device in turn (stock SGLang's loop). The models predict it from the split windows: TTFT at the
whole device plus one decode step, TPOT at the whole device stretched by the share of time spent
prefilling (the stalls that splitting removes). So at light load it wins (each phase twice the
compute) and under prefill pressure the split does.
"""

from __future__ import annotations

import math

from policies.latency_model import window_fit
from policies.observation import Decision, Observation

DEFAULTS = {"percentile": 90, "window": 2, "min_samples": 10, "history": 12, "hysteresis": 0.02,
            "comfort": 0.97, "cooldown": 1, "max_move_pct": 40.0, "min_pct": 10.0, "grain_pct": 5.0,
            "overlap": 0, "probe_after": 2, "unified": 1}
SPACE = {"percentile": (50, 99, "int"), "window": (1, 20, "int"), "min_samples": (1, 500, "int"),
         "history": (2, 100, "int"), "hysteresis": (0.0, 0.2, "float"), "comfort": (0.5, 1.0, "float"),
         "cooldown": (0, 10, "int"), "max_move_pct": (5.0, 100.0, "float"), "min_pct": (1.0, 50.0, "float"),
         "grain_pct": (1.0, 25.0, "float"), "overlap": (0, 1, "int"), "probe_after": (1, 10, "int"),
         "unified": (0, 1, "int")}


def candidates(split: tuple[int, int], units: int, params: dict, unified_available: bool = False) -> list[tuple[int, int]]:
    grain = max(1, round(params["grain_pct"] * units / 100))
    floor = max(1, round(params["min_pct"] * units / 100))
    reach = max(grain, round(params["max_move_pct"] * units / 100))
    values = sorted(set(range(floor, units + 1, grain)) | {units})
    near = lambda v, now: abs(v - now) <= reach
    if params["overlap"]:
        options = [(x, y) for x in values for y in values if near(x, split[0]) and near(y, split[1])]
    else:
        options = [(x, units - x) for x in values if units - x >= floor and near(x, split[0])]
    if unified_available and params["unified"]:
        options = sorted(set(options) | {(units, units)})
    return options


def predicted(split: tuple[int, int], units: int, model, prefill_load: float,
              unified: bool) -> tuple[float, float]:
    """(TTFT, TPOT) the fitted models predict at `split`; `prefill_load`: the share of the
    device's time that prefill work takes at full speed."""
    if unified and split == (units, units):  # the phases take turns on the whole device
        return model.ttft(1.0) + model.tpot(1.0), model.tpot(1.0) / max(0.05, 1.0 - prefill_load)
    return model.ttft(split[0] / units), model.tpot(split[1] / units)


def decide(obs: Observation, params: dict, state: dict) -> Decision:
    state = dict(state)
    fitted = window_fit(obs, params, state)
    if isinstance(fitted, str):
        return Decision(None, fitted, state)
    ttft_p, tpot_p, model, ttft, tpot, prefill_s = fitted
    units, (x, y) = obs.units, obs.split
    if not state.get("ttft_points"):
        return Decision(None, "no window at a split yet: the models have nothing to scale from", state)
    prefill_load = min(1.0, state.get("last_busy", 0.0) * x / units)
    now_ttft, now_tpot = predicted((x, y), units, model, prefill_load, obs.unified_available)

    def attainment(split) -> float:
        """Predicted share meeting both SLOs at `split`: a sample meets the TTFT SLO there if it
        is below the SLO scaled back by how much faster (or slower) the split makes TTFT. The
        requests still queued for prefill have no TTFT yet (the window's histogram leaves out
        exactly the ones an overload delays): they are served in order, the last after the queue
        drains at that split's prefill rate, so those past the SLO count as misses."""
        cand_ttft, cand_tpot = predicted(split, units, model, prefill_load, obs.unified_available)
        speed_ttft = cand_ttft / now_ttft
        ok_ttft = ttft.share_at_most(obs.ttft_slo_s / speed_ttft) if math.isfinite(speed_ttft) else 0.0
        if obs.waiting:
            drain_s = obs.waiting * prefill_s * x / split[0]
            on_time = obs.waiting * min(1.0, obs.ttft_slo_s / drain_s) if drain_s > 0 else obs.waiting
            ok_ttft = (ok_ttft * ttft.total + on_time) / (ttft.total + obs.waiting)
        if not tpot.total:
            return ok_ttft
        speed_tpot = cand_tpot / now_tpot
        return min(ok_ttft, tpot.share_at_most(obs.tpot_slo_s / speed_tpot))

    seen = f"p{params['percentile']} TTFT {ttft_p * 1e3:.0f} ms, TPOT {tpot_p * 1e3:.0f} ms"
    now = attainment((x, y))
    if state.get("cooldown", 0) > 0:
        state["cooldown"] -= 1
        return Decision(None, f"cooling down after a move ({seen})", state)
    if now >= params["comfort"]:
        return Decision(None, f"both SLOs met by {now:.0%} of requests ({seen}): keep", state)
    options = candidates((x, y), units, params, obs.unified_available)
    # among splits predicted equally good, the smallest move (it takes the least from the other phase)
    best = max(options, key=lambda s: (attainment(s), -abs(s[0] - x) - abs(s[1] - y)))
    gain = attainment(best)
    if best != (x, y) and gain >= now + params["hysteresis"]:
        state["cooldown"] = params["cooldown"]
        return Decision(best, f"{seen}: predicted attainment {now:.0%} -> {gain:.0%} at {best[0]},{best[1]}", state)
    # The models see no gain, yet exactly one phase keeps missing: they may have been fitted in
    # another regime. Probe one step toward that phase; the next window refits them with the new point.
    ttft_miss = ttft_p > obs.ttft_slo_s
    tpot_miss = not math.isnan(tpot_p) and tpot_p > obs.tpot_slo_s
    missing = ("ttft" if ttft_miss else "tpot") if ttft_miss != tpot_miss else None
    last, count = state.get("missed", (None, 0))
    state["missed"] = (missing, count + 1 if missing == last else 1)
    if missing and state["missed"][1] >= params["probe_after"]:
        grow = 0 if ttft_miss else 1
        toward = [s for s in options if s[grow] > (x, y)[grow] and s[1 - grow] <= (x, y)[1 - grow]]
        disjoint = [s for s in options if s[0] + s[1] <= units]
        if obs.unified_available and (x, y) == (units, units) and tpot_miss and disjoint:
            toward = [max(disjoint, key=lambda s: s[1])]  # decode stalls behind prefill: isolate it
        if toward:
            probe = min(toward, key=lambda s: (abs(s[0] - x) + abs(s[1] - y), -s[grow]))
            state["cooldown"] = params["cooldown"]
            return Decision(probe, f"{'TTFT' if ttft_miss else 'TPOT'} misses ({seen}) and the models see no "
                                   f"better split: probing {probe[0]},{probe[1]}", state)
    return Decision(None, f"no split predicted clearly better ({seen}; attainment {now:.0%} now, "
                          f"{gain:.0%} at best)", state)
