"""Goodput of placement candidates, by simulation (the planner's cost is here).

Each candidate's unit is simulated on the same request lengths, re-timed as Poisson arrivals at
each tried rate, and its goodput found by bracketing (doubling or halving from a guess) and then
bisection (loadtest/report.py's bisect_goodput). A run must last long enough to reach the steady
state a server at that rate would see: with a fixed few hundred requests, a fast enough arrival
rate is just one burst that a large decode instance holds in memory at once, and the goodput
never ends. So the lengths are cycled until arrivals span `span_s` (default three times the
longest a request may live within its SLOs: TTFT + mean output x TPOT).
What keeps a search cheap:
- one simulation per distinct (unit, rate): results are cached, replicas are never simulated
  (they scale the rate linearly);
- disaggregation follows DistServe's Algorithm 1: each prefill and each decode instance
  configuration is simulated alone once (prefill: TTFT only, outputs of one token; decode: TPOT
  only, prompts prefilled instantly), the P/D ratio of every unit is estimated from those
  goodputs, and only the most promising units are simulated whole (KV transfer, joint SLOs).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

from loadtest.report import bisect_goodput, summarize
from loadtest.workload import Request, with_poisson_arrivals
from planner.candidates import DEVICES_PER_NODE, Candidate, Parallel, nodes_spanned
from simulator.hardware_profiles import Hardware, Model
from simulator.perf_model import Roofline
from simulator.serving_systems import SYSTEMS, EngineOverheads
from simulator.simulation import Simulation, to_records

MIXED_CHUNK = 1024  # colocated mixed batching: Sarathi/vLLM-style small chunks (as benchmarks/paper_comparison.py)


@dataclass(frozen=True)
class InstantPrefill:
    """A stand-in prefill side for simulating decode instances alone: no time, no memory limit."""

    units: int = 100
    kv_capacity: int = 1 << 40
    chunk_size: int = 1 << 30
    max_batch: int = 1 << 30
    devices: int = 0
    request_overhead_s: float = 0.0
    handoff_s: float = 0.0

    def step_time(self, work, share, other=None) -> float:
        return 1e-9

    def kv_transfer_s(self, tokens, bandwidth=None) -> float:
        return 0.0


@dataclass
class Evaluator:
    hardware: Hardware
    model: Model
    requests: list[Request]           # lengths; arrivals are re-timed per rate
    ttft_slo_s: float
    tpot_slo_s: float
    target: float = 0.9
    policy: object = None             # semi-PD: a policies/ module
    policy_params: dict = field(default_factory=dict)
    inter_node_bandwidth: float = 0.0  # bytes/s; 0 = the hardware profile's
    devices_per_node: int = DEVICES_PER_NODE
    iterations: int = 6
    span_s: float = 0.0               # simulated arrival span; 0 = 3 x (TTFT SLO + mean output x TPOT SLO)
    min_rate: float = 0.05            # below this a candidate's goodput counts as none
    # the engine time of every step: our engine's, SGLang's (hidden behind the step by its
    # overlap scheduler: it shows only when a step is shorter)
    overheads: EngineOverheads = SYSTEMS["sglang-prefill-first"].overheads
    simulations: int = 0
    sim_wall_s: float = 0.0
    goodputs: dict = field(default_factory=dict)  # (what, key) -> req/s
    search_wall_s: dict = field(default_factory=dict)  # key -> seconds its goodput search took
    _attainment: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.span_s:
            mean_output = sum(r.output_len for r in self.requests) / len(self.requests)
            self.span_s = 3 * (self.ttft_slo_s + mean_output * self.tpot_slo_s)

    # -- building blocks --------------------------------------------------------------------------
    @property
    def inter_node(self) -> float:
        return self.inter_node_bandwidth or self.hardware.inter_node_bandwidth

    def roofline(self, par: Parallel, cross_node: bool = False) -> Roofline:
        """An instance's step-time model; stages on different nodes send over the inter-node link."""
        cross_node = cross_node or par.devices > self.devices_per_node
        return Roofline(self.hardware, self.model, par.tp, pp=par.pp,
                        stage_link_bandwidth=self.inter_node if cross_node and par.pp > 1 else 0.0)

    def kv_bandwidth(self, c: Candidate) -> float:
        """KV link of a disaggregated unit: NVLink, one lane per device pair (each rank sends its
        own shard), or the inter-node link (one per node, shared)."""
        if c.kv_link == "nvlink":
            return self.hardware.link_bandwidth * min(c.instance.devices, c.decode.devices)
        return self.inter_node

    def link_rate(self, c: Candidate) -> float:
        """Requests/s one prefill instance's KV link can send, at the workload's mean prompt."""
        mean_prompt = sum(r.prompt_len for r in self.requests) / len(self.requests)
        return self.kv_bandwidth(c) / ((mean_prompt + 1) * self.model.kv_bytes_per_token)

    def _measure(self, key, rate: float, build) -> tuple[float, float, float]:
        """(joint, TTFT, TPOT attainment) of `build()`'s simulation at `rate`, cached."""
        cached = self._attainment.get((key, rate))
        if cached is None:
            sim, requests = build(rate)
            started = time.perf_counter()
            records = to_records(sim.run(requests))
            self.sim_wall_s += time.perf_counter() - started
            self.simulations += 1
            s = summarize(records, self.ttft_slo_s, self.tpot_slo_s)
            cached = self._attainment[(key, rate)] = (s["slo_attainment"], s["ttft_attainment"], s["tpot_attainment"])
        return cached

    def search(self, key, build, which: int = 0, guess: float = 1.0) -> float:
        """Goodput (req/s of one unit) of the simulation `build(rate)` builds: bracket from
        `guess` by doubling or halving, then bisect. `which`: 0 joint, 1 TTFT, 2 TPOT attainment."""
        if key in self.goodputs:
            return self.goodputs[key]
        started = time.perf_counter()
        good = self._search(key, build, which, guess)
        self.goodputs[key] = good
        self.search_wall_s[key] = time.perf_counter() - started
        return good

    def _search(self, key, build, which: int, guess: float) -> float:
        ok = lambda rate: self._measure(key, rate, build)[which] >= self.target
        low = high = max(guess, self.min_rate)
        if ok(low):
            while ok(high) and high < 1e5:
                low, high = high, high * 2
        else:
            while not ok(low):
                high, low = low, low / 2
                if low < self.min_rate:  # misses even when requests arrive (nearly) one at a time
                    return 0.0
        return bisect_goodput(lambda rate: self._measure(key, rate, build)[which], low, high,
                              self.target, self.iterations) if low < high else low

    def _timed(self, rate: float, requests=None) -> list[Request]:
        """The lengths, cycled to span `span_s` at `rate`, as Poisson arrivals (seed 0: every
        candidate sees the same requests at a given rate)."""
        requests = requests or self.requests
        count = max(len(requests), math.ceil(rate * self.span_s))
        return with_poisson_arrivals([requests[i % len(requests)] for i in range(count)], rate, seed=0)

    def _sim(self, model, system: str, **options) -> Simulation:
        return Simulation(model, system, ttft_slo_s=self.ttft_slo_s, tpot_slo_s=self.tpot_slo_s,
                          overheads=self.overheads, **options)

    # -- candidates -------------------------------------------------------------------------------
    def semipd_split(self) -> tuple[int, int]:
        units = self.hardware.units
        return (units, units) if self.policy_params.get("overlap") or self.policy is None else (units // 2, units - units // 2)

    def unit_goodput(self, c: Candidate, guess: float = 1.0) -> float:
        """Goodput of one unit of a colocated, semi-PD or disaggregated candidate (joint SLOs)."""
        if c.kind == "colocated":
            model = self.roofline(c.instance)
            options = dict(batching=c.batching, chunk_size=c.chunk_size or None)
            build = lambda rate: (self._sim(model, "unified", **options), self._timed(rate))
        elif c.kind == "semi-pd":
            model = self.roofline(c.instance)
            options = dict(split=self.semipd_split(), policy=self.policy, policy_params=self.policy_params,
                           tick_s=1.0, switch_s=0.001)
            build = lambda rate: (self._sim(model, "semi-pd", **options), self._timed(rate))
        else:
            cross = c.affinity == "low" and nodes_spanned(c.devices, self.devices_per_node) > 1
            p, d = self.roofline(c.instance, cross), self.roofline(c.decode, cross)
            options = dict(instances=(c.prefill_count, c.decode_count), decode_model=d,
                           link_bandwidth=self.kv_bandwidth(c))
            build = lambda rate: (self._sim(p, "disagg", **options), self._timed(rate))
        return self.search(("unit", c), build, 0, guess)

    def prefill_goodput(self, par: Parallel) -> float:
        """One prefill instance alone: the rate at which TTFT holds (outputs of one token)."""
        model = self.roofline(par)
        alone = [replace(r, output_len=1) for r in self.requests]
        build = lambda rate: (self._sim(model, "unified", batching="prefill-first"), self._timed(rate, alone))
        return self.search(("prefill", par), build, 1)

    def decode_goodput(self, par: Parallel) -> float:
        """One decode instance alone: the rate at which TPOT holds (prompts arrive prefilled)."""
        model = self.roofline(par)
        build = lambda rate: (self._sim(InstantPrefill(), "disagg", decode_model=model, instances=(1, 1),
                                        chunk_size=model.chunk_size, max_batch=model.max_batch),
                              self._timed(rate))
        return self.search(("decode", par), build, 2)

    @property
    def searches(self) -> int:
        return len(self.goodputs)


def longest(requests: list[Request]) -> int:
    return max((r.prompt_len + r.output_len for r in requests), default=0)
