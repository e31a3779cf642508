"""A discrete-event simulator of LLM serving: unified, disaggregated (xPyD) and semi-PD.

Virtual clock, events in a heap. What happens is what our engine and SGLang do, at step grain:
- a prefill step takes waiting requests first come first served up to `chunk_size` tokens (the
  last one chunked), allocating their KV; a request is admitted when its prompt and a reserve for
  its remaining output (`reserve_ratio`, SGLang's new_token_ratio) fit in the free KV;
- a decode step advances every running request by one token; when the KV cache cannot take
  another token, the most recently started request is retracted and re-queued at the front (its
  prompt and output recomputed later, its output kept);
- shared-prefix groups hit a radix cache: a cached prefix is stored once and not recomputed;
  unreferenced prefixes are evicted least recently used when memory runs short.
Systems: `unified` (one worker; "mixed" steps batch decode with a prefill chunk as vLLM/Sarathi
chunked prefill does, "prefill-first" runs prefill steps before decode as SGLang's default);
`disagg` (P prefill and D decode instances on separate devices, KV sent over a link, weights on
each); `semi-pd` (two workers on one device, one KV pool, compute split between them, changed by a
policy from policies/ every tick through the same `decide` the live tuner calls, effective after
`switch_s`; "coupled" as our engine and semi-PD's SGLang code, where the decode loop launches
prefills between its steps, or not, as semi-PD's DistServe-based prototype). Each step also pays
the engine's CPU time (`overheads`, a serving system's: simulator/serving_systems.py).
Per-request work is O(log n) per event (a decode step does not touch each request), so a one-hour
trace simulates in seconds. `simulate` runs one simulation, `simulate_rates` one per rate with the
report `semipd simulate` prints.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from contract import LATENCY_BUCKETS_S
from loadtest.load_generator import RequestRecord
from loadtest.report import goodput, summarize, write_records
from loadtest.workload import mean_rate, scale_rate
from policies import Decision, Histogram, Observation
from simulator.perf_model import Work, prefill_work
from simulator.serving_systems import EngineOverheads

@dataclass
class SimRequest:
    index: int
    arrival: float
    prompt: int
    output: int
    group: object = None
    prefix: int = 0
    todo: int = 0         # tokens left to prefill
    own: int = 0          # KV tokens held by this request alone (a cached prefix is the cache's)
    cached: int = 0       # prefix tokens taken from the radix cache
    generated: int = 0
    first_token: float | None = None
    finish: float | None = None
    error: str | None = None
    admitted: bool = False
    join_step: int = 0
    join_generated: int = 0
    epoch: int = 0
    retractions: int = 0


@dataclass
class Pool:
    """One device's KV cache (in tokens) with a radix cache of shared prefixes."""

    capacity: int
    reserve_ratio: float = 0.1
    used: int = 0
    cache: OrderedDict = field(default_factory=OrderedDict)  # group -> [tokens, references]
    remaining_output: int = 0  # of running requests, for the admission reserve

    def free_for(self, tokens: int) -> bool:
        """Make room for `tokens` by evicting unreferenced prefixes; True if it fits."""
        for group in list(self.cache):
            if self.used + tokens <= self.capacity:
                break
            size, refs = self.cache[group]
            if refs == 0:
                del self.cache[group]
                self.used -= size
        return self.used + tokens <= self.capacity

    def admit(self, req: SimRequest) -> bool:
        """Take the request's prefix from the cache if there; True if its prompt and reserve fit."""
        if req.group is not None and req.group in self.cache and not req.cached:
            self.cache[req.group][1] += 1
            self.cache.move_to_end(req.group)
            req.cached = self.cache[req.group][0]
        total = req.prompt + req.generated
        req.todo = total - req.cached
        reserve = int(self.reserve_ratio * (self.remaining_output + req.output - req.generated))
        if self.free_for(req.todo + reserve):
            return True
        self.release_prefix(req)
        return False

    def release_prefix(self, req: SimRequest) -> None:
        if req.cached:
            self.cache[req.group][1] -= 1
            req.cached = 0

    def insert_prefix(self, req: SimRequest) -> None:
        """After a full prefill, its group's prefix becomes shared (moved from `own` to the cache)."""
        if req.group is None or req.cached or req.group in self.cache or not req.prefix:
            return
        self.cache[req.group] = [req.prefix, 1]
        req.cached, req.own = req.prefix, req.own - req.prefix

    def release(self, req: SimRequest) -> None:
        self.used -= req.own
        req.own = 0
        self.release_prefix(req)


class Worker:
    """One engine loop on `share` of a device: prefill steps, decode steps, or both ("mixed")."""

    def __init__(self, sim: "Simulation", name: str, pool: Pool, share: float, role: str, model=None):
        self.sim, self.name, self.pool, self.share, self.role = sim, name, pool, share, role
        self.model = model or sim.model  # disaggregated decode instances may differ (their own TP/PP)
        self.waiting: deque[SimRequest] = deque()   # to prefill
        self.incoming: deque[SimRequest] = deque()  # disaggregated: KV arrived, waiting for memory here
        self.pending: list[SimRequest] = []         # prefilled, joining the next decode step
        self.running: dict[int, SimRequest] = {}    # decoding, in order of joining
        self.finishes: list = []                    # heap of (step, seq, epoch, request)
        self.steps = 0
        self.context = 0      # sum of the running sequences' lengths
        self.busy_until = -1.0
        self.work: Work | None = None
        self.busy_s = 0.0
        self.peer: Worker | None = None  # the other worker on the same device (semi-PD)
        self.handoffs = 0                # semi-PD decode: finished prefills to take in before its next step
        self.link_free = 0.0             # disaggregated prefill: when its KV link is next free
        self.link_owner = self           # whose link_free: the instance's first worker under PP

    @property
    def busy(self) -> bool:
        return self.busy_until > self.sim.now

    @property
    def load(self) -> int:
        return len(self.running) + len(self.pending) + len(self.incoming)

    def kick(self) -> None:
        if not self.busy:
            self.sim.at(self.sim.now, self.start_step)

    # -- forming a step --------------------------------------------------------------------------
    def take_prefill(self, budget: int) -> list[tuple[SimRequest, int, int]]:
        batch, decoder = [], self.peer or self  # semi-PD: the decode worker's batch is the one capped
        cap = self.sim.max_decode_tokens if self.sim.system != "disagg" else None  # (disagg: at the decoder)
        tokens = decoder.context + sum(r.prompt + r.generated for r in decoder.pending) if cap else 0
        while self.waiting and budget > 0 and decoder.load + len(batch) < self.sim.max_batch:
            req = self.waiting[0]
            if cap and not req.admitted and tokens and tokens + req.prompt + req.generated > cap:
                break
            tokens += req.prompt + req.generated
            if not req.admitted:
                if not self.pool.admit(req):
                    break
                req.admitted = True
                self.pool.remaining_output += req.output - req.generated
            n = min(req.todo, budget)
            if not self.pool.free_for(n):
                break
            done = req.prompt + req.generated - req.todo  # already in the KV (cached or computed)
            self.pool.used += n
            req.own += n
            req.todo -= n
            batch.append((req, n, done))
            budget -= n
            if req.todo:
                break  # chunked: it continues at the head of the queue
            self.waiting.popleft()
        return batch

    def admit_incoming(self) -> None:
        cap = self.sim.max_decode_tokens  # DistServe's decode instance: a cap on the batch's context
        tokens = self.context + sum(r.prompt + r.generated for r in self.pending)
        while self.incoming and len(self.running) + len(self.pending) < self.sim.max_batch:
            req = self.incoming[0]
            need = req.prompt + req.generated
            if cap and tokens + need > cap and (self.running or self.pending):
                break
            tokens += need
            reserve = int(self.pool.reserve_ratio * (self.pool.remaining_output + req.output - req.generated))
            if not self.pool.free_for(need + reserve):
                break
            self.incoming.popleft()
            self.pool.used += need
            req.own = need
            self.pool.remaining_output += req.output - req.generated
            self.pending.append(req)

    def join_pending(self) -> None:
        for req in self.pending:
            req.join_step, req.join_generated = self.steps, req.generated
            self.running[req.index] = req
            self.context += req.prompt + req.generated
            heapq.heappush(self.finishes, (self.steps + req.output - req.generated, next(self.sim.seq),
                                           req.epoch, req))
        self.pending = []

    def make_room_for_decode(self) -> None:
        while self.running and not self.pool.free_for(len(self.running)):
            _, victim = self.running.popitem()  # the latest to join
            self.leave(victim)
            victim.epoch += 1
            victim.retractions += 1
            victim.admitted = False
            self.sim.retractions += 1
            self.sim.requeue(victim)

    def leave(self, req: SimRequest) -> None:
        decoded = self.steps - req.join_step
        req.generated = req.join_generated + decoded
        req.own += decoded
        self.context -= req.prompt + req.generated
        self.pool.remaining_output -= req.output - req.generated
        self.pool.release(req)

    def load_now(self) -> Work | None:
        """What this worker is running, or about to run (a decoder with requests is nearly always
        in a step), for the other phase's contention."""
        if self.busy:
            return self.work
        if self.role == "decode" and (self.running or self.pending):
            return Work(decode_batch=len(self.running) + len(self.pending), decode_context=self.context)
        return None

    def start_step(self) -> None:
        if self.busy:
            return
        if self.role == "prefill" and self.peer is not None and self.peer.busy and self.sim.coupled:
            return  # semi-PD coupled: the decode loop launches prefills between its steps; it kicks us
        decodes = self.role in ("decode", "mixed")
        if decodes:
            self.admit_incoming()
            self.join_pending()
            self.make_room_for_decode()
        decode_batch = len(self.running) if decodes else 0
        batch = []
        if self.role == "prefill" or (self.role == "mixed" and (self.sim.batching == "mixed" or not decode_batch)):
            batch = self.take_prefill(self.sim.chunk_size - decode_batch)
        elif self.role == "mixed" and self.waiting:  # prefill-first: a prefill step if one can form
            batch = self.take_prefill(self.sim.chunk_size)
            if batch:
                decode_batch = 0
        if not batch and not decode_batch:
            self.work = None
            return
        self.pool.used += decode_batch
        work = prefill_work([(n, done) for _, n, done in batch], decode_batch, self.context if decode_batch else 0)
        peer_load = self.peer.load_now() if self.peer is not None else None
        other = (peer_load, self.peer.share) if peer_load is not None else None
        context = work.prefill_tokens + work.prefill_context + work.decode_context
        duration = self.sim.overheads.seconds(self.model.step_time(work, self.share, other), len(batch) + decode_batch,
                                              context) \
            + self.handoffs * self.model.handoff_s
        self.handoffs = 0
        self.work, self.busy_until = work, self.sim.now + duration
        self.busy_s += duration
        self.sim.at(self.busy_until, self.end_step, batch, decode_batch)

    def end_step(self, batch, decode_batch: int) -> None:
        now = self.sim.now
        self.work = None
        if decode_batch:
            self.steps += 1
            self.context += decode_batch
            self.pool.remaining_output -= decode_batch
            while self.finishes and self.finishes[0][0] <= self.steps:
                _, _, epoch, req = heapq.heappop(self.finishes)
                if epoch == req.epoch and self.running.get(req.index) is req:
                    del self.running[req.index]
                    self.leave(req)
                    self.sim.finish(req, now)
        for req, _, _ in batch:
            if req.todo == 0:
                self.prefilled(req, now)
        if self.role == "decode" and self.peer is not None:
            self.peer.start_step()  # between decode steps: launch the next prefill first
        self.start_step()

    def prefilled(self, req: SimRequest, now: float) -> None:
        req.generated += 1
        req.own += 1
        self.pool.used += 1
        self.pool.remaining_output -= 1
        self.pool.insert_prefix(req)
        decode = self.peer or self
        if decode is not self:
            # semi-PD: the decode loop owns the requests; it takes the prefill's result (and
            # streams the first token) when its step in progress ends
            now = max(now, decode.busy_until)
            decode.handoffs += 1
        if req.first_token is None:
            req.first_token = now + self.sim.model.request_overhead_s
            self.sim.window["ttft"].append(req.first_token - req.arrival)
        if req.generated >= req.output:
            self.pool.remaining_output -= req.output - req.generated
            self.pool.release(req)
            self.sim.finish(req, now)
        elif self.sim.system == "disagg":
            self.sim.send_kv(self, req)
        else:
            decode.pending.append(req)
            decode.kick()


class Simulation:
    """Build with a step-time model and a system, then `run(requests)`."""

    def __init__(self, model, system: str = "semi-pd", split: tuple[int, int] | None = None,
                 instances: tuple[int, int] = (1, 1), batching: str = "mixed",
                 link_bandwidth: float | None = None, policy=None, policy_params: dict | None = None,
                 ttft_slo_s: float = 1.0, tpot_slo_s: float = 0.1, tick_s: float = 1.0,
                 switch_s: float = 0.0, chunk_size: int | None = None, max_batch: int | None = None,
                 reserve_ratio: float = 0.1, decode_model=None, coupled: bool = True,
                 overheads: EngineOverheads | None = None, max_decode_tokens: int | None = None):
        if system not in ("unified", "disagg", "semi-pd"):
            raise ValueError(f"unknown system {system!r}; valid: unified, disagg, semi-pd")
        if batching not in ("mixed", "prefill-first"):
            raise ValueError(f"unknown batching {batching!r}; valid: mixed, prefill-first")
        self.model, self.system, self.batching = model, system, batching
        self.chunk_size = chunk_size or model.chunk_size
        self.max_batch = max_batch or model.max_batch
        self.link_bandwidth = link_bandwidth
        self.coupled, self.overheads = coupled, overheads or EngineOverheads()
        self.max_decode_tokens = max_decode_tokens
        self.policy, self.params, self.policy_state = policy, policy_params or {}, {}
        self.ttft_slo_s, self.tpot_slo_s, self.tick_s, self.switch_s = ttft_slo_s, tpot_slo_s, tick_s, switch_s
        self.now = 0.0
        self.events: list = []
        self.seq = itertools.count()
        self.retractions = 0
        self.decisions: list[dict] = []
        self.window = {"ttft": [], "tpot": [], "arrivals": 0}
        self.unfinished = 0
        units = model.units
        new_pool = lambda m=model: Pool(m.kv_capacity, reserve_ratio)
        # Pipeline parallelism: `pp` micro-batches in flight per instance, one worker each, over
        # the instance's one KV pool (each sees the whole pipeline's latency; see perf_model).
        stages = lambda m: getattr(m, "pp", 1)
        self.decode_model = decode_model or model
        if system != "disagg" and decode_model is not None:
            raise ValueError("a separate decode model applies to --system disagg only")
        if system == "semi-pd":
            if stages(model) > 1:
                raise ValueError("semi-PD with pipeline parallelism is not modelled (TP only)")
            self.split = tuple(split or (units // 2, units - units // 2))
            for side, value in zip(("prefill", "decode"), self.split):
                if not 1 <= value <= units:
                    raise ValueError(f"{side} share {value} is out of range 1..{units}")
            pool = new_pool()
            self.prefill = [Worker(self, "prefill", pool, self.split[0] / units, "prefill")]
            self.decode = [Worker(self, "decode", pool, self.split[1] / units, "decode")]
            self.prefill[0].peer, self.decode[0].peer = self.decode[0], self.prefill[0]
            self.devices = model.devices
        elif system == "unified":
            pool = new_pool()
            self.prefill = self.decode = [Worker(self, "unified", pool, 1.0, "mixed") for _ in range(stages(model))]
            self.devices = model.devices
        else:
            p, d = instances
            if p < 1 or d < 1:
                raise ValueError(f"disaggregation needs at least one prefill and one decode instance, got {p}P{d}D")
            dm = self.decode_model
            pools = [new_pool() for _ in range(p)]
            self.prefill = [Worker(self, f"prefill{i}", pools[i], 1.0, "prefill") for i in range(p) for _ in range(stages(model))]
            for w in self.prefill:
                w.link_owner = next(x for x in self.prefill if x.pool is w.pool)
            pools = [new_pool(dm) for _ in range(d)]
            self.decode = [Worker(self, f"decode{i}", pools[i], 1.0, "decode", dm) for i in range(d) for _ in range(stages(dm))]
            model.kv_transfer_s(1, link_bandwidth)  # a profile without a link says so now
            self.devices = model.devices * p + dm.devices * d

    # -- events ----------------------------------------------------------------------------------
    def at(self, time: float, fn, *args) -> None:
        heapq.heappush(self.events, (time, next(self.seq), fn, args))

    def arrive(self, req: SimRequest) -> None:
        self.window["arrivals"] += 1
        need = req.prompt + req.output
        capacity = min(self.model.kv_capacity, self.decode_model.kv_capacity)
        if need > capacity:
            req.error = f"needs {need} KV tokens; one instance holds {capacity}"
            self.finish(req, self.now)
            return
        self.requeue(req, front=False)

    def requeue(self, req: SimRequest, front: bool = True) -> None:
        worker = min(self.prefill, key=lambda w: len(w.waiting))
        if front:
            worker.waiting.appendleft(req)
        else:
            worker.waiting.append(req)
        worker.kick()

    def send_kv(self, source: Worker, req: SimRequest) -> None:
        """Disaggregated: KV goes over the prefill instance's link (one transfer at a time)."""
        link = source.link_owner  # one link per instance, whatever its micro-batch workers
        start = max(self.now, link.link_free)
        link.link_free = start + self.model.kv_transfer_s(req.prompt + req.generated, self.link_bandwidth)
        self.at(link.link_free, self.kv_arrived, source, req)

    def kv_arrived(self, source: Worker, req: SimRequest) -> None:
        source.pool.remaining_output -= req.output - req.generated
        source.pool.release(req)
        source.kick()  # memory freed on the prefill instance
        target = min(self.decode, key=lambda w: w.load)
        target.incoming.append(req)
        target.kick()

    def finish(self, req: SimRequest, now: float) -> None:
        # (the request overhead is the first token's: parsing and tokenizing the request)
        req.finish = max(now, req.first_token or now)
        self.unfinished -= 1
        self.window["tpot"].append(req)
        for w in self.decode + self.prefill:  # memory freed: waiting requests may now fit
            if w.incoming or w.waiting:
                w.kick()

    # -- the policy ------------------------------------------------------------------------------
    def tick(self) -> None:
        if self.unfinished <= 0 or not self.events:  # all done, or nothing left that could finish
            return
        prefill, decode = self.prefill[0], self.decode[0]
        tpots = [(r.finish - r.first_token) / (r.output - 1)
                 for r in self.window["tpot"] if r.error is None and r.output > 1]
        obs = Observation(
            time_s=self.now, window_s=self.tick_s, split=self.split, units=self.model.units,
            ttft_slo_s=self.ttft_slo_s, tpot_slo_s=self.tpot_slo_s,
            ttft=Histogram.of(self.window["ttft"], LATENCY_BUCKETS_S),
            tpot=Histogram.of(tpots, LATENCY_BUCKETS_S),
            arrival_rate=self.window["arrivals"] / self.tick_s,
            prefill_busy=min(1.0, prefill.busy_s / self.tick_s), decode_busy=min(1.0, decode.busy_s / self.tick_s),
            waiting=len(prefill.waiting), running=len(decode.running))
        prefill.busy_s = decode.busy_s = 0.0
        self.window = {"ttft": [], "tpot": [], "arrivals": 0}
        decision: Decision = self.policy.decide(obs, self.params, self.policy_state)
        self.policy_state = decision.state
        if decision.split is not None and tuple(decision.split) != self.split:
            self.decisions.append({"time_s": self.now, "old": self.split, "new": tuple(decision.split),
                                   "reason": decision.reason})
            self.split = tuple(decision.split)
            self.at(self.now + self.switch_s, self.apply_split, self.split)
        self.at(self.now + self.tick_s, self.tick)

    def apply_split(self, split: tuple[int, int]) -> None:
        self.prefill[0].share = split[0] / self.model.units
        self.decode[0].share = split[1] / self.model.units

    # -- running ---------------------------------------------------------------------------------
    def run(self, requests) -> list[SimRequest]:
        reqs = [SimRequest(i, r.arrival_s, r.prompt_len, max(1, r.output_len), r.prefix_group, r.prefix_len)
                for i, r in enumerate(requests)]
        self.unfinished = len(reqs)
        for req in reqs:
            self.at(req.arrival, self.arrive, req)
        if self.policy is not None and self.system == "semi-pd":
            self.at(self.tick_s, self.tick)
        while self.events:
            self.now, _, fn, args = heapq.heappop(self.events)
            fn(*args)
        stuck = [r for r in reqs if r.finish is None]
        for req in stuck:  # nothing left to run them: a deadlock in the model is a bug, say so
            req.error, req.finish = "never scheduled (simulator ran out of events)", self.now
        return reqs


def to_records(reqs: list[SimRequest]) -> list[RequestRecord]:
    """The same records `semipd bench` measures, so the same report applies."""
    records = []
    for r in reqs:
        ok = r.error is None
        records.append(RequestRecord(
            prompt_len=r.prompt, max_tokens=r.output, arrival_s=r.arrival, output_len=r.output if ok else 0,
            ttft_s=r.first_token - r.arrival if ok else None,
            e2e_s=r.finish - r.arrival if ok else None, error=r.error))
    return records


def simulate(model, requests, system: str, ttft_slo_s: float, tpot_slo_s: float, **options):
    """Run one simulation; (records as `semipd bench` makes them, the finished Simulation)."""
    sim = Simulation(model, system, ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s, **options)
    return to_records(sim.run(requests)), sim


def simulate_rates(model, requests, system: str, ttft_slo_s: float, tpot_slo_s: float,
                   rates: list[float] | None = None, label: str = "", workload: str = "",
                   records_path: str | None = None, **options) -> dict:
    """The workload simulated at each rate (re-timed; None: as it is): `semipd bench`'s report
    (`label` and the `workload` spec are its names) with the devices used, goodput per device, and
    per rate the retractions, the split decisions and the simulation's wall time. With
    `records_path`, one JSON line per simulated request is appended there."""
    natural = mean_rate(requests)
    per_rate = []
    for rate in rates or [natural]:
        timed = requests if rates is None else scale_rate(requests, rate / natural)
        started = time.perf_counter()
        records, sim = simulate(model, timed, system, ttft_slo_s, tpot_slo_s, **options)
        wall = time.perf_counter() - started
        if records_path:
            write_records(records_path, records, label=label, rate=rate)
        duration = max(r.arrival_s + (r.e2e_s or 0) for r in records) - min(r.arrival_s for r in records)
        per_rate.append({"rate": rate, **summarize(records, ttft_slo_s, tpot_slo_s, duration),
                         "retractions": sim.retractions, "decisions": sim.decisions, "sim_wall_s": wall})
    devices = sim.devices
    good = goodput({r["rate"]: r["slo_attainment"] for r in per_rate})
    return {"label": label, "workload": workload, "system": system, "devices": devices,
            "ttft_slo_s": ttft_slo_s, "tpot_slo_s": tpot_slo_s,
            **{k: v for k, v in per_rate[-1].items() if k != "decisions"},
            "goodput_rps": good, "goodput_per_device_rps": good / devices, "rates": per_rate}
