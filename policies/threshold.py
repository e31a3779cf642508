"""SGLang's PD-multiplexing rule as a baseline: a table of splits chosen by the decode batch size
(`manual_divisions` entries [prefill SMs, decode SMs, decode batch threshold] in its pdmux config).
Here three bands: up to `bs_low` running requests, up to `bs_high`, and more; the more requests
decode, the more of the device it gets. Disjoint shares; no latency feedback at all.
"""

from __future__ import annotations

from policies.observation import Decision, Observation

DEFAULTS = {"bs_low": 16, "bs_high": 64, "prefill_pct_low": 80.0, "prefill_pct_mid": 60.0, "prefill_pct_high": 40.0}
SPACE = {"bs_low": (1, 256, "int"), "bs_high": (2, 1024, "int"), "prefill_pct_low": (5.0, 95.0, "float"),
         "prefill_pct_mid": (5.0, 95.0, "float"), "prefill_pct_high": (5.0, 95.0, "float")}


def decide(obs: Observation, params: dict, state: dict) -> Decision:
    batch = obs.running
    if batch <= params["bs_low"]:
        band, pct = f"<= {params['bs_low']}", params["prefill_pct_low"]
    elif batch <= max(params["bs_low"], params["bs_high"]):
        band, pct = f"<= {params['bs_high']}", params["prefill_pct_mid"]
    else:
        band, pct = f"> {params['bs_high']}", params["prefill_pct_high"]
    units = obs.units
    prefill = min(units - 1, max(1, round(pct * units / 100))) if units > 1 else 1
    target = (prefill, max(1, units - prefill))
    reason = f"decode batch {batch} ({band}): prefill {pct:.0f}%"
    return Decision(None if target == tuple(obs.split) else target, reason, state)
