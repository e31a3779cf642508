"""Collective times between GPUs: latency plus bytes over a bus bandwidth, per topology.

A ring all-reduce over w devices moves 2 (w - 1) / w of the message through each link, a send/recv
the message once; so t = latency + factor * size / bus_bandwidth (NCCL's "bus bandwidth"). Fitted
per (collective, devices, devices per node) from Vidur's network profiles, because the path
changes with them: NVLink or NVSwitch inside a node, PCIe between pairs on a pairwise-NVLink
board, the network between nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.vidur_profiles import CollectiveTime

def traffic_factor(collective: str, workers: int) -> float:
    return 2 * (workers - 1) / workers if collective == "all_reduce" else 1.0


@dataclass(frozen=True)
class CollectiveFit:
    collective: str
    workers: int
    devices_per_node: int
    latency_s: float
    bus_bandwidth: float  # bytes/s

    def seconds(self, size: float) -> float:
        return self.latency_s + traffic_factor(self.collective, self.workers) * size / self.bus_bandwidth


def fit_collectives(samples: list[CollectiveTime]) -> list[CollectiveFit]:
    """One fit per (collective, workers, devices per node): least squares on relative error."""
    groups: dict[tuple, list[CollectiveTime]] = {}
    for s in samples:
        groups.setdefault((s.collective, s.workers, s.devices_per_node), []).append(s)
    fits = []
    for (collective, workers, per_node), mine in sorted(groups.items()):
        size = np.array([s.size for s in mine], float) * traffic_factor(collective, workers)
        t = np.array([s.seconds for s in mine])
        # t / t = 1 = latency / t + size / (bw t): linear in (latency, 1 / bw), weighted by 1 / t
        a = np.stack([1 / t, size / t], axis=1)
        (latency, inverse_bw), *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
        fits.append(CollectiveFit(collective, workers, per_node, max(float(latency), 0.0),
                                  1 / max(float(inverse_bw), 1e-15)))
    return fits


def pick(fits: list[CollectiveFit], collective: str, workers: int, devices_per_node: int) -> CollectiveFit:
    """The fit for this group, or the nearest measured one with the same collective (more workers
    within a node: the largest measured within-node group)."""
    same = [f for f in fits if f.collective == collective]
    if not same:
        raise KeyError(f"no {collective} measurements in the profile")
    within = lambda f: f.workers <= f.devices_per_node
    want_within = workers <= devices_per_node
    candidates = [f for f in same if within(f) == want_within] or same
    return min(candidates, key=lambda f: (abs(f.workers - workers), -f.workers))


def collective_errors(fits: list[CollectiveFit], samples: list[CollectiveTime]) -> list[dict]:
    rows = []
    for s in samples:
        fit = pick(fits, s.collective, s.workers, s.devices_per_node)
        predicted = fit.seconds(s.size)
        rows.append({"op": f"{s.collective}/{s.workers}x{s.devices_per_node}", "size": s.size,
                     "measured_ms": s.seconds * 1e3, "predicted_ms": predicted * 1e3,
                     "rel_error": predicted / s.seconds - 1})
    return rows
