"""A fixed split: `prefill` and `decode` percent of the device (100,100 lets the device share
itself between the phases, the semi-PD paper's "100/100" baseline)."""

from __future__ import annotations

from policies.observation import Decision, Observation

DEFAULTS = {"prefill_pct": 50.0, "decode_pct": 50.0}
SPACE = {"prefill_pct": (1.0, 100.0, "float"), "decode_pct": (1.0, 100.0, "float")}


def to_units(pct: float, units: int) -> int:
    return min(units, max(1, round(pct * units / 100)))


def decide(obs: Observation, params: dict, state: dict) -> Decision:
    target = (to_units(params["prefill_pct"], obs.units), to_units(params["decode_pct"], obs.units))
    if target == tuple(obs.split):
        return Decision(None, f"static split {target[0]},{target[1]} in force", state)
    return Decision(target, f"static split {target[0]},{target[1]}", state)
