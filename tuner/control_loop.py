"""The tuner's control loop: observe the engine, let a policy decide, apply the split.

Every tick: read the engine's split and metrics, turn the cumulative histograms into this window's
(tuner/engine_metrics.py), call the policy's `decide` (the same call the simulator makes), and apply
a new split through the engine's admin API. A failed read keeps the split in force, is reported,
and the next try backs off (up to 30 s). A split the engine rejects, or one outside the range it
reports, is recorded and never retried blindly. Settings, the policy's state and every decision
are kept in SQLite (tuner/store.py), so a restarted tuner resumes.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import httpx

from contract import read_split_state
from policies import POLICIES, get_policy, load_params, quantile
from tuner.engine_client import EngineClient, SplitRejected
from tuner.engine_metrics import MetricsError, Snapshot, observe
from tuner.store import TunerStore

MAX_BACKOFF_S = 30.0



def nearest_in_menu(split: tuple[int, int], menu: list | None, units: int) -> tuple[int, int]:
    """An engine with a menu of splits (GPU semi-pd: pdmux's SM splits built at start, the MPS
    percentages or green-context sizes it takes) takes only those: a split of the menu stays; any
    other becomes the pair whose prefill share of the device is nearest to the policy's (the even
    one on a tie). Under MPS (P,100) the policy's prefill share is P percent."""
    if not menu or list(split) in [list(pair) for pair in menu]:
        return tuple(split)
    share = split[0] / (split[0] + split[1])
    return tuple(min(menu, key=lambda pair: (abs(pair[0] / units - share), abs(pair[0] - pair[1]))))

class NothingToTune(RuntimeError):
    pass


# A unified engine (`semipd serve --mode unified`, stock SGLang) runs both phases on the whole
# device and has no /semipd/split: the tuner still reads its windows, and decides nothing.
OBSERVING = "observing only: the engine runs both phases together (no /semipd/split), nothing to tune"


@dataclass
class Settings:
    ttft_slo_s: float
    tpot_slo_s: float
    policy: str = "mpc"
    params: dict = field(default_factory=dict)
    enabled: bool = True
    interval_s: float = 2.0


def checked(settings: Settings) -> Settings:
    """The same settings with the policy's parameters filled in; ValueError names what is wrong."""
    for name in ("ttft_slo_s", "tpot_slo_s", "interval_s"):
        value = getattr(settings, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 3600 or math.isnan(value):
            raise ValueError(f"{name} must be a number of seconds in (0, 3600), got {value!r}")
    if settings.policy not in POLICIES:
        raise ValueError(f"unknown policy {settings.policy!r}; valid policies: {', '.join(POLICIES)}")
    if not isinstance(settings.enabled, bool):
        raise ValueError(f"enabled must be true or false, got {settings.enabled!r}")
    params = load_params(settings.policy, overrides=settings.params)
    return Settings(float(settings.ttft_slo_s), float(settings.tpot_slo_s), settings.policy, params,
                    settings.enabled, float(settings.interval_s))


def window_summary(obs) -> dict:
    """What the dashboard plots for one window."""
    out = {"time": obs.time_s, "window_s": obs.window_s, "split": list(obs.split), "units": obs.units,
           "rate": obs.arrival_rate, "prefill_busy": obs.prefill_busy, "decode_busy": obs.decode_busy,
           "waiting": obs.waiting, "running": obs.running, "ttft_count": obs.ttft.total, "tpot_count": obs.tpot.total}
    for name, hist, slo in (("ttft", obs.ttft, obs.ttft_slo_s), ("tpot", obs.tpot, obs.tpot_slo_s)):
        for q in (50, 90, 99):
            value = quantile(hist, q / 100)
            out[f"{name}_p{q}_s"] = None if math.isnan(value) else value
        share = hist.share_at_most(slo)
        out[f"{name}_attainment"] = None if math.isnan(share) else share
    return out


class Tuner:
    def __init__(self, engine: EngineClient, store: TunerStore, settings: Settings, source=None, fresh: bool = False):
        self.engine, self.store = engine, store
        self.source = source or engine  # where metrics come from: the engine, or Prometheus
        saved = None if fresh else store.get("settings")
        self.settings = checked(Settings(**saved) if saved else settings)
        self.resumed = saved is not None
        self.policy_state = ({} if fresh else store.get("policy_state")) or {}
        store.put("settings", asdict(self.settings))
        self.lock = threading.RLock()
        self.previous: Snapshot | None = None
        self.windows: deque[dict] = deque(maxlen=1800)
        self.split_state: dict | None = None
        self.status, self.failures, self.outage_since = "starting", 0, None
        self.engine_events_since = time.time()  # the engine's history after this is reported as events
        self.last_reason = ""
        self.counts = {"ticks": 0, "decisions": 0, "applied": 0, "rejected": 0, "read_failures": 0}

    # -- one tick ------------------------------------------------------------------------------
    def tick(self) -> float:
        """Observe, decide, act; returns the seconds until the next tick."""
        with self.lock:
            self.counts["ticks"] += 1
            try:
                split_state = self.engine.split()
                snapshot = self.source.snapshot()
            except (httpx.HTTPError, MetricsError, KeyError, TypeError, ValueError) as exc:
                return self._failed(exc)
            # unified: both phases have the whole device, one unit of one
            split, units = read_split_state(split_state) if split_state else ((1, 1), 1)
            if self.outage_since is not None:
                in_force = f"{split[0]},{split[1]}" if split_state else "none (unified)"
                self.store.add_event("recovered", f"engine readable again after {time.time() - self.outage_since:.0f} s "
                                                  f"({self.failures} failed reads); the split in force is {in_force}")
                self.previous = None  # the engine may have restarted: start a fresh window
            self.status, self.failures, self.outage_since = ("ok" if split_state else OBSERVING), 0, None
            self.split_state = split_state
            self._report_engine_events(split_state)
            if self.previous is not None and snapshot.time_s <= self.previous.time_s:
                return self.settings.interval_s  # Prometheus has not scraped the engine since the last tick
            s = self.settings
            obs = observe(self.previous, snapshot, split, units, s.ttft_slo_s, s.tpot_slo_s,
                          unified_available=bool(split_state and "unified" in split_state))
            first = self.previous is None
            self.previous = snapshot
            if first:
                return s.interval_s  # cumulative counts since the engine started are not a window
            self.windows.append(window_summary(obs))
            if s.enabled and split_state:
                self._decide(obs, split, units)
            return s.interval_s

    def _report_engine_events(self, split_state: dict | None) -> None:
        """What happened in the engine (a prefill worker died, was replaced) becomes the tuner's
        events: its split history marks such records with `event`."""
        for record in (split_state or {}).get("history", []):
            if record.get("event") and record.get("time", 0) > self.engine_events_since:
                self.store.add_event(record["event"], f"engine: {record['who']} (split {record['new']})")
                self.engine_events_since = record["time"]

    def _failed(self, exc: Exception) -> float:
        self.failures += 1
        self.counts["read_failures"] += 1
        kind = "metrics unreadable" if isinstance(exc, (MetricsError, KeyError, TypeError, ValueError)) else "engine unreachable"
        self.status = f"{kind}: {exc}"
        if self.outage_since is None:
            self.outage_since = time.time()
        self.store.add_event(kind, f"{exc} (failure {self.failures}; keeping the split in force)")
        return min(MAX_BACKOFF_S, self.settings.interval_s * 2 ** self.failures)

    def _decide(self, obs, split: tuple[int, int], units: int) -> None:
        decision = get_policy(self.settings.policy).decide(obs, self.settings.params, self.policy_state)
        self.policy_state = decision.state
        self.store.put("policy_state", self.policy_state)
        self.last_reason = self.windows[-1]["reason"] = decision.reason
        if decision.split is None:
            return
        new = nearest_in_menu(tuple(decision.split), (self.split_state or {}).get("menu"), units)
        if new == split:
            return
        self.counts["decisions"] += 1
        self._apply(new, split, units, f"policy {self.settings.policy}", decision.reason)

    @staticmethod
    def invalid(split, units: int) -> str | None:
        if len(split) != 2 or any(not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= units for v in split):
            return f"split {list(split)} is outside the engine's range: each share a whole number from 1 to {units}"
        return None

    def _apply(self, new: tuple[int, int], old, units: int, who: str, reason: str) -> dict:
        error = self.invalid(new, units)
        if error:
            self.counts["rejected"] += 1
            self.store.add_event("invalid split", f"{who}: {error}; not applied")
            return self.store.add_decision(old, list(new), who, reason, False, error)
        try:
            self.engine.set_split(new, who)
        except (SplitRejected, httpx.HTTPError) as exc:
            self.counts["rejected"] += 1
            self.store.add_event("split rejected", f"{who}: {new[0]},{new[1]}: {exc}")
            return self.store.add_decision(old, list(new), who, reason, False, str(exc))
        self.counts["applied"] += 1
        return self.store.add_decision(old, list(new), who, reason, True)

    # -- operator ------------------------------------------------------------------------------
    def update_settings(self, changes: dict) -> Settings:
        with self.lock:
            unknown = set(changes) - set(Settings.__dataclass_fields__)
            if unknown:
                raise ValueError(f"unknown setting(s) {sorted(unknown)}; settings: {', '.join(Settings.__dataclass_fields__)}")
            merged = asdict(self.settings) | changes
            if "policy" in changes and "params" not in changes:
                merged["params"] = {}  # another policy: its own defaults
            new = checked(Settings(**merged))
            # another policy or parameters, or a tuner switched back on (what it gathered before it
            # was off may no longer hold): the policy starts afresh
            if new.policy != self.settings.policy or new.params != self.settings.params or \
                    (new.enabled and not self.settings.enabled):
                self.policy_state = {}
                self.store.put("policy_state", {})
            self.settings = new
            self.store.put("settings", asdict(new))
            self.store.add_event("settings", f"changed {sorted(changes)}")
            return new

    def force_split(self, prefill, decode, who: str = "operator") -> dict:
        with self.lock:
            state = self.split_state or self.engine.split()
            if state is None:
                raise NothingToTune(f"the engine at {self.engine.url} runs both phases together: it has no split to set")
            error = self.invalid((prefill, decode), state["units"])
            if error:
                raise ValueError(error)
            old, units = read_split_state(state)
            decision = self._apply((prefill, decode), old, units, who, "set by hand")
            if not decision["applied"]:
                raise SplitRejected(decision["error"])
            self.split_state = None
            return decision

    def state(self) -> dict:
        with self.lock:
            return {"settings": asdict(self.settings), "status": self.status, "failures": self.failures,
                    "outage_since": self.outage_since, "engine": self.engine.url,
                    "metrics_from": self.source.url, "split": self.split_state,
                    "last_reason": self.last_reason, "counts": dict(self.counts), "resumed": self.resumed,
                    "windows": list(self.windows)[-300:], "decisions": self.store.decisions(limit=100),
                    "events": self.store.events(limit=50)}

    def metrics_text(self) -> str:
        with self.lock:
            s, last = self.settings, (self.windows[-1] if self.windows else {})
            lines = [f"semipd_tuner_enabled {int(s.enabled)}", f"semipd_tuner_ttft_slo_seconds {s.ttft_slo_s}",
                     f"semipd_tuner_tpot_slo_seconds {s.tpot_slo_s}", f"semipd_tuner_engine_up {int(self.status in ('ok', OBSERVING))}"]
            lines += [f"semipd_tuner_{name}_total {value}" for name, value in self.counts.items()]
            for key in ("ttft_p90_s", "tpot_p90_s", "ttft_attainment", "tpot_attainment", "rate"):
                if last.get(key) is not None:
                    lines.append(f"semipd_tuner_window_{key.removesuffix('_s')} {last[key]}")
            if self.split_state:
                for role in ("prefill", "decode"):
                    lines.append(f'semipd_tuner_split{{worker="{role}"}} {self.split_state["split"][role]}')
            return "\n".join(lines) + "\n"

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            stop.wait(self.tick())
