"""Where the owner's loop spends its time: seconds per phase, per iteration, summed on request.

Phases are named by the loop (decode forward, decode completion, prefill hand-off, prefill
completion, formation, intake, waiting, ...); what no phase covers is "other". `breakdown(since)`
sums the iterations that ended after `since` (unix seconds) for `GET /semipd/steps`.
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import contextmanager

ITERATIONS_KEPT = 50_000


class LoopTimer:
    def __init__(self):
        self.iterations: deque[tuple[float, float, dict[str, float]]] = deque(maxlen=ITERATIONS_KEPT)
        self._started = 0.0
        self._phases: dict[str, float] = {}

    def start_iteration(self) -> None:
        self._started = time.perf_counter()
        self._phases = {}

    @contextmanager
    def phase(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self._phases[name] = self._phases.get(name, 0.0) + time.perf_counter() - started

    def end_iteration(self) -> None:
        total = time.perf_counter() - self._started
        self.iterations.append((time.time(), total, self._phases))

    def breakdown(self, since: float = 0.0) -> dict:
        """{"iterations", "seconds", "phases": {name: {"seconds", "share"}}} over iterations since."""
        totals: dict[str, float] = {}
        wall, count = 0.0, 0
        for ended, total, phases in self.iterations:
            if ended < since:
                continue
            count += 1
            wall += total
            for name, seconds in phases.items():
                totals[name] = totals.get(name, 0.0) + seconds
            totals["other"] = totals.get("other", 0.0) + max(0.0, total - sum(phases.values()))
        return {"iterations": count, "seconds": wall,
                "phases": {name: {"seconds": s, "share": s / wall if wall else 0.0}
                           for name, s in sorted(totals.items(), key=lambda kv: -kv[1])}}
