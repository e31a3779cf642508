"""Wave groups for a GEMM whose output is all-reduced piece by piece: pure functions, no torch.

Vocabulary (after FlashOverlap): the output rows of one GEMM are cut into `waves` equal blocks of
`wave_rows` rows (the last one may be short); consecutive waves are gathered into *groups*; each
group is one GEMM call and one collective. `groups` is a composition of the wave count, e.g.
(1, 2, 1) for four waves: the first wave alone, then two, then one.

Many small groups start communicating early but pay a per-call cost many times; few large groups
do the opposite. The tuner picks the composition, either by a pipeline model of GEMM time and
link bandwidth (`choose_by_model`) or by timing every candidate (`choose_by_measurement`), and the
result is cached per shape and device (`ScheduleCache`).

Every rank of a group must issue the same collectives with the same sizes, so a choice must be
a deterministic function of inputs that all ranks share (the model with shared constants, or
timings already agreed across ranks).
"""

from __future__ import annotations

import itertools
import json
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

# Exhaustive enumeration is 2**(waves-1) compositions: 128 at 8 waves; beyond that it is not small.
MAX_WAVES_LIMIT = 12


@dataclass(frozen=True)
class ShapeKey:
    """What a schedule is cached by: the GEMM as each rank sees it, and where it runs.

    m: output rows (tokens); n: output columns (hidden size); k: the rank's own slice of the
    reduction dimension; device: `device_tag(...)`, which includes the backend and world size
    because the cost of the collective depends on both."""

    m: int
    n: int
    k: int
    device: str

    def __post_init__(self) -> None:
        for name in ("m", "n", "k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is not a valid GEMM dimension; valid: an integer >= 1")


def device_tag(device_type: str, backend: str, world_size: int) -> str:
    """e.g. 'cpu-gloo-x2': schedules tuned for one of these do not transfer to another."""
    return f"{device_type}-{backend}-x{world_size}"


@dataclass(frozen=True)
class WavePlan:
    """How one GEMM's m output rows are cut: waves of wave_rows rows, gathered into groups."""

    m: int
    wave_rows: int
    groups: tuple[int, ...]

    @property
    def waves(self) -> int:
        return wave_count(self.m, self.wave_rows)

    def row_ranges(self) -> list[tuple[int, int]]:
        return group_row_ranges(self.groups, self.m, self.wave_rows)


def wave_count(m: int, wave_rows: int) -> int:
    if wave_rows < 1:
        raise ValueError(f"wave_rows={wave_rows} is invalid; valid: an integer >= 1")
    return math.ceil(m / wave_rows)


def wave_rows_for(m: int, max_waves: int, min_wave_rows: int = 1) -> int:
    """Rows per wave so that m rows make at most max_waves waves of at least min_wave_rows rows."""
    if not 1 <= max_waves <= MAX_WAVES_LIMIT:
        raise ValueError(f"max_waves={max_waves} is out of range; valid: 1..{MAX_WAVES_LIMIT}")
    if m < 1:
        raise ValueError(f"m={m} is invalid; valid: an integer >= 1")
    return max(min_wave_rows, math.ceil(m / max_waves))


def compositions(waves: int) -> Iterator[tuple[int, ...]]:
    """Every ordered way to cut `waves` into positive parts (2**(waves-1) of them)."""
    if not 1 <= waves <= MAX_WAVES_LIMIT:
        raise ValueError(f"waves={waves} is out of range for exhaustive search; valid: 1..{MAX_WAVES_LIMIT}")
    for cuts in itertools.product((False, True), repeat=waves - 1):
        parts, size = [], 1
        for cut in cuts:
            if cut:
                parts.append(size)
                size = 1
            else:
                size += 1
        parts.append(size)
        yield tuple(parts)


def even_groups(waves: int, count: int) -> tuple[int, ...]:
    """`count` groups as equal as possible (larger ones first), e.g. 7 waves in 3 -> (3, 2, 2)."""
    if not 1 <= count <= waves:
        raise ValueError(f"group count {count} is out of range; valid: 1..{waves} (the wave count)")
    base, extra = divmod(waves, count)
    return tuple(base + 1 if i < extra else base for i in range(count))


def validate_groups(groups: Iterable[int], waves: int) -> tuple[int, ...]:
    """The groups as a tuple, or ValueError naming the bad value and the valid range."""
    groups = tuple(groups)
    if not groups:
        raise ValueError(f"groups is empty; valid: positive integers that sum to the wave count {waves}")
    for i, g in enumerate(groups):
        if not isinstance(g, int) or isinstance(g, bool) or not 1 <= g <= waves:
            raise ValueError(f"group size {g!r} at position {i} is invalid; valid: an integer in 1..{waves} "
                             f"(the wave count), all sizes summing to {waves}")
    if sum(groups) != waves:
        raise ValueError(f"group sizes {list(groups)} sum to {sum(groups)}; valid: they must sum to the "
                         f"wave count {waves}")
    return groups


def group_row_ranges(groups: Iterable[int], m: int, wave_rows: int) -> list[tuple[int, int]]:
    """[start, stop) output rows of each group; the last wave is cut short at m."""
    groups = validate_groups(groups, wave_count(m, wave_rows))
    ranges, wave = [], 0
    for g in groups:
        start, wave = wave * wave_rows, wave + g
        ranges.append((start, min(wave * wave_rows, m)))
    return ranges


@dataclass(frozen=True)
class CostModel:
    """Times of the two pipeline stages, as simple as will rank candidates.

    GEMM: rows * n * k * 2 flops at gemm_flops_per_s, plus launch_s per call (on a CPU: the
    library's per-call setup and worse efficiency of thin blocks; on a GPU: kernel launch and the
    tail wave). Collective: comm_latency_s + bytes / comm_bytes_per_s per call; calls run one at a
    time on the link. contention (0..1) slows compute by that fraction while a collective runs,
    because on a CPU both share the cores; 0 on a GPU with its own copy engines / SMs for NCCL."""

    gemm_flops_per_s: float
    comm_latency_s: float
    comm_bytes_per_s: float
    launch_s: float = 0.0
    contention: float = 0.0

    def __post_init__(self) -> None:
        for name in ("gemm_flops_per_s", "comm_bytes_per_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; valid: > 0")
        for name in ("comm_latency_s", "launch_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; valid: >= 0")
        if not 0 <= self.contention < 1:
            raise ValueError(f"contention={self.contention!r} is invalid; valid: 0 <= contention < 1")

    def gemm_s(self, rows: int, n: int, k: int) -> float:
        return self.launch_s + 2.0 * rows * n * k / self.gemm_flops_per_s

    def comm_s(self, rows: int, n: int, elem_bytes: int) -> float:
        return self.comm_latency_s + rows * n * elem_bytes / self.comm_bytes_per_s


def predict_s(model: CostModel, ranges: list[tuple[int, int]], n: int, k: int, elem_bytes: int = 4) -> float:
    """Finish time of the last collective when group i's collective starts once its GEMM is done
    and the previous collective has finished. Compute slowed by contention while comm is busy
    is approximated per group: a GEMM that starts before the link is free runs slower."""
    compute_end = comm_end = 0.0
    for start, stop in ranges:
        gemm = model.gemm_s(stop - start, n, k)
        if comm_end > compute_end:  # the link is busy for (part of) this GEMM
            busy = min(comm_end - compute_end, gemm)
            gemm += busy * model.contention / (1 - model.contention)
        compute_end += gemm
        comm_end = max(compute_end, comm_end) + model.comm_s(stop - start, n, elem_bytes)
    return comm_end


def choose_by_model(model: CostModel, m: int, n: int, k: int, wave_rows: int,
                    elem_bytes: int = 4) -> tuple[tuple[int, ...], float]:
    """Exhaustive over compositions of the wave count, scored by the model; ties go to fewer groups."""
    waves = wave_count(m, wave_rows)
    best = None
    for groups in compositions(waves):
        t = predict_s(model, group_row_ranges(groups, m, wave_rows), n, k, elem_bytes)
        score = (round(t, 12), len(groups))
        if best is None or score < best[0]:
            best = (score, groups, t)
    return best[1], best[2]


def choose_by_measurement(candidates: Iterable[tuple[int, ...]],
                          measure: Callable[[tuple[int, ...]], float]) -> tuple[tuple[int, ...], dict]:
    """The candidate with the smallest measured time, and every measurement. `measure` must return
    the same number on every rank (e.g. the max over ranks) or ranks may pick differently."""
    times = {tuple(c): measure(tuple(c)) for c in candidates}
    if not times:
        raise ValueError("no candidate group sizes to measure")
    best = min(times, key=lambda g: (times[g], len(g)))
    return best, times


class ScheduleCache:
    """Chosen groups per ShapeKey, least recently used dropped past maxsize; optional JSON file
    (the analogue of FlashOverlap's per-shape config files)."""

    def __init__(self, maxsize: int = 4096):
        if maxsize < 1:
            raise ValueError(f"maxsize={maxsize} is invalid; valid: an integer >= 1")
        self.maxsize = maxsize
        self._entries: OrderedDict[ShapeKey, WavePlan] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: ShapeKey) -> bool:
        return key in self._entries

    def get(self, key: ShapeKey) -> WavePlan | None:
        plan = self._entries.get(key)
        if plan is not None:
            self._entries.move_to_end(key)
        return plan

    def put(self, key: ShapeKey, plan: WavePlan) -> None:
        if plan.m != key.m:
            raise ValueError(f"plan for m={plan.m} stored under a key with m={key.m}")
        validate_groups(plan.groups, plan.waves)
        self._entries[key] = plan
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)

    def get_or_choose(self, key: ShapeKey, choose: Callable[[ShapeKey], WavePlan]) -> WavePlan:
        plan = self.get(key)
        if plan is not None:
            self.hits += 1
            return plan
        self.misses += 1
        plan = choose(key)
        self.put(key, plan)
        return plan

    def save(self, path: str | Path) -> None:
        rows = [{**asdict(k), "wave_rows": p.wave_rows, "groups": list(p.groups)} for k, p in self._entries.items()]
        Path(path).write_text(json.dumps(rows, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path, maxsize: int = 4096) -> "ScheduleCache":
        cache = cls(maxsize)
        for row in json.loads(Path(path).read_text()):
            key = ShapeKey(row["m"], row["n"], row["k"], row["device"])
            cache.put(key, WavePlan(key.m, row["wave_rows"], tuple(row["groups"])))
        return cache
