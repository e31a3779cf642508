"""The planner's search: which deployment of N devices serves the highest rate per device within
the TTFT and TPOT SLOs (colocated, disaggregated or semi-PD instances, each with its own tensor and
pipeline parallelism and replicas).

Every feasible candidate (memory, heads and layers divisibility, TP inside a node) is simulated on
the workload's request lengths re-timed as Poisson arrivals; its goodput is found by bisection over
the rate (planner/evaluate.py), and plans are ranked by goodput per device. Disaggregated units are
chosen as DistServe's Algorithm 1 does: prefill and decode instance configurations are simulated
alone, the P/D ratio estimated from their goodputs, and the most promising units simulated whole.
"""

from __future__ import annotations

import sys
import time
from math import gcd

from tqdm import tqdm

from planner.candidates import Candidate, Plan, disagg_units, estimate_disagg, instance_options, rank, replicas
from planner.evaluate import MIXED_CHUNK, longest
from policies import get_policy, load_params


def planning_policy(spec: str):
    """'NAME[:PARAMS.json]' -> (policy module, its parameters, the overrides of its defaults)."""
    name, _, path = spec.partition(":")
    policy = get_policy(name)
    # without a tuned file: the semi-PD paper's MPS setting, both shares may reach the whole device
    # (start 100/100); a policy that partitions from 50/50 misses a tight TTFT at TP1 at any rate
    overrides = {"overlap": 1} if not path and "overlap" in policy.DEFAULTS else {}
    return policy, load_params(name, path or None, overrides), overrides


def search(evaluator, devices: int, kinds=("colocated", "disagg", "semi-pd"), verify: int = 8,
           progress: bool = False) -> dict:
    """Evaluate every candidate; the ranked plans, the best of each kind and the search's cost."""
    started, cpu = time.perf_counter(), time.process_time()
    ev, per_node = evaluator, evaluator.devices_per_node
    feasible, rejected = instance_options(ev.hardware, ev.model, devices, longest(ev.requests), per_node)
    whole = []
    if "colocated" in kinds:
        whole += [Candidate("colocated", par, batching=b, chunk_size=MIXED_CHUNK if b == "mixed" else 0)
                  for par in feasible for b in ("prefill-first", "mixed")]
    if "semi-pd" in kinds:
        whole += [Candidate("semi-pd", par) for par in feasible if par.pp == 1]
    singles = feasible if "disagg" in kinds else []
    verify = verify if "disagg" in kinds and feasible else 0
    bar = None
    if progress:
        bar = tqdm(total=len(whole) + 2 * len(singles) + verify, desc="goodput searches", unit="cand",
                   file=sys.stderr, leave=False)
    tick = (lambda: bar.update(1)) if bar else (lambda: None)
    plans = []
    for c in whole:
        plans.append(Plan(c, ev.unit_goodput(c), replicas(c.devices, devices, per_node)))
        tick()
    estimates, prefill, decode = [], {}, {}
    if singles:
        for par in singles:
            prefill[par] = ev.prefill_goodput(par)
            tick()
            decode[par] = ev.decode_goodput(par)
            tick()
        units = [u for u in disagg_units(singles, singles, devices, per_node) if replicas(u.devices, devices, per_node)]
        estimate = lambda u: estimate_disagg(prefill[u.instance], decode[u.decode], u, ev.link_rate(u))
        seen, ordered = set(), []
        for u in sorted(units, key=lambda u: (-estimate(u) / u.devices, u.devices)):
            # a multiple of a smaller unit with the same ratio is that unit replicated
            g = gcd(u.prefill_count, u.decode_count)
            shape = (u.instance, u.decode, u.prefill_count // g, u.decode_count // g, u.kv_link, u.affinity)
            if shape not in seen:
                seen.add(shape)
                ordered.append(u)
        estimates = [(u, estimate(u)) for u in ordered]
        for u, estimate in estimates[:verify]:
            if estimate > 0:
                plans.append(Plan(u, ev.unit_goodput(u, guess=estimate), replicas(u.devices, devices, per_node)))
            tick()
    if bar:
        bar.close()
    ranked = rank(plans)
    best = {}
    for p in ranked:
        best.setdefault(p.candidate.kind, p)
    return {"plans": ranked, "best_by_kind": best, "evaluated": plans, "rejected": rejected, "feasible": feasible,
            "disagg_estimates": estimates, "prefill_alone": prefill, "decode_alone": decode,
            "goodput_searches": ev.searches, "simulations": ev.simulations,
            "wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu, "sim_wall_s": ev.sim_wall_s}
