"""Several semi-pd engines on this machine behind SGLang's router (`semipd up --engines N`).

Each engine is a plain `semipd serve --mode semi-pd` on its own share of the devices (on CPU a
core is a device, the engine pinned to its cores; on a GPU host, its GPUs), so that its split
moves within its share; SGLang's router (the
`sglang-router` package: its cache-aware or round-robin policy, health checks, retries) gives the
clients one URL. One tuner per engine: an engine's split answers its own queue and its own
TTFT/TPOT, and the router already balances load between engines, so each tuner is a plain
`semipd tune` and a shift of load on one engine moves that engine's split only.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

from contract.access import ADMIN_KEY_ENV, bearer
from stack.server_process import SEMIPD, ServerProcess

ROUTER_POLICIES = {"cache-aware": "cache_aware", "round-robin": "round_robin"}
# Health checks every 2 s, three misses to mark an engine down, one answer to bring it back. A dead
# engine refuses at once (down in about 6 s); a busy one may take seconds to answer: an engine of one
# core under load, whose HTTP process shares that core, missed 2 s and was dropped while serving.
# Until then the circuit breaker keeps requests off it: open after 3 failed sends (the default, 10,
# let all 5 retries of a request sent just after a kill go to the dead engine and fail it), tried
# again after 5 s.
ROUTER_HEALTH = ["--health-check-interval-secs", "2", "--health-check-timeout-secs", "10",
                 "--health-failure-threshold", "3", "--health-success-threshold", "1",
                 "--cb-failure-threshold", "3", "--cb-timeout-duration-secs", "5"]


NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU NVIDIA's driver has


def fleet_devices(driver: Path = NVIDIA_GPUS, environ=os.environ) -> tuple[str, list[int]]:
    """What a fleet's engines share out: ("GPU", the NVIDIA GPUs visible: CUDA_VISIBLE_DEVICES's,
    else all the driver has) where there are any, else ("core", this process's cores)."""
    count = len(list(driver.iterdir())) if driver.is_dir() else 0
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if not count:
        return "core", sorted(os.sched_getaffinity(0))
    if visible is None:
        return "GPU", list(range(count))
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if not all(v.isdigit() for v in ids):  # each engine's CUDA_VISIBLE_DEVICES is a subset of these
        raise ValueError(f"CUDA_VISIBLE_DEVICES={visible!r}: a fleet shares out GPU indices (e.g. 0,1,2,3), "
                         "not UUIDs")
    return "GPU", [int(v) for v in ids]


def device_groups(devices: list[int], engines: int, unit: str = "core") -> list[list[int]]:
    """`devices` (cores or GPUs) shared out between `engines` engines, in order, as evenly as they go."""
    if not 1 <= engines <= len(devices):
        raise ValueError(f"--engines {engines} is out of range 1..{len(devices)}: each engine needs a {unit} "
                         f"of its own (this machine gives {len(devices)})")
    size, extra = divmod(len(devices), engines)
    groups, start = [], 0
    for i in range(engines):
        end = start + size + (i < extra)
        groups.append(devices[start:end])
        start = end
    return groups


def router_command(engine_urls: list[str], host: str, port: int, policy: str, metrics_port: int,
                   admin_key: str | None) -> list[str]:
    """SGLang's router in front of `engine_urls`; its worker-management routes need `admin_key`."""
    if policy not in ROUTER_POLICIES:
        raise ValueError(f"unknown router policy {policy!r}; valid: {', '.join(ROUTER_POLICIES)}")
    command = [sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", *engine_urls,
               "--host", host, "--port", str(port), "--policy", ROUTER_POLICIES[policy],
               "--prometheus-port", str(metrics_port),
               "--prometheus-host", host,  # (its default is every interface)
               "--log-level", "warn",
               "--worker-startup-timeout-secs", "900", *ROUTER_HEALTH]
    if admin_key:
        command += ["--control-plane-api-keys", f"semipd:operator:admin:{admin_key}"]
    return command


def pinned(cores: list[int], command: list[str]) -> list[str]:
    """`command` run on `cores` only (taskset)."""
    return ["taskset", "-c", ",".join(map(str, cores)), *command]


def on_gpus(gpus: list[int], command: list[str]) -> list[str]:
    """`command` seeing `gpus` only (CUDA_VISIBLE_DEVICES; inside, they are numbered from 0).
    (Written for GPU hosts; tested here on the command line only.)"""
    return ["env", f"CUDA_VISIBLE_DEVICES={','.join(map(str, gpus))}", *command]


def semipd_engine(devices: list[int], host: str, port: int, serve_args=(), unit: str = "core") -> list[str]:
    """`semipd serve --mode semi-pd` on `devices` (cores, or GPUs), serving `port`."""
    command = [*SEMIPD, "serve", "--mode", "semi-pd", "--host", host, "--port", str(port), *serve_args]
    return pinned(devices, command) if unit == "core" else on_gpus(devices, command)


class Fleet:
    """The engines and the router of one fleet: engine i runs `commands[i]` (on `groups[i]`, of
    cores or GPUs: `unit`) and serves `engine_ports[i]`; the router serves `router_port`."""

    def __init__(self, run_dir: Path, host: str, router_port: int, engine_ports: list[int], groups: list[list[int]],
                 env: dict, router_policy: str = "cache-aware", metrics_port: int = 29000,
                 commands: list[list[str]] | None = None, unit: str = "core"):
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        commands = commands or [semipd_engine(g, host, port, (), unit) for port, g in zip(engine_ports, groups)]
        self.engines = [ServerProcess(command, f"http://{local}:{port}", run_dir / f"engine-{i}.log", env)
                        for i, (command, port) in enumerate(zip(commands, engine_ports))]
        self.groups, self.unit, self.admin_key = groups, unit, env.get(ADMIN_KEY_ENV)
        self.metrics_url = f"http://{local}:{metrics_port}/metrics"  # the router's: which engines it counts healthy
        self.router = ServerProcess(router_command([e.url for e in self.engines], host, router_port, router_policy,
                                                   metrics_port, self.admin_key),
                                    f"http://{local}:{router_port}", run_dir / "router.log", env)

    def launch(self) -> list[tuple[str, ServerProcess]]:
        """Start every engine and the router, without waiting; (name, process) of each."""
        parts = [(f"engine {i}", e.launch()) for i, e in enumerate(self.engines)]
        return parts + [("router", self.router.launch())]

    def wait_ready(self, timeout_s: float) -> None:
        """Until every engine answers and the router counts them all healthy."""
        for engine in self.engines:
            engine.wait_ready(timeout_s)
        self.router.wait_ready(timeout_s, health_path="/health")  # (both timeouts count from the launch)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(healthy_engines(self.router.url, self.admin_key)) == len(self.engines):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the router at {self.router.url} does not count all {len(self.engines)} engines "
                           f"healthy after 60 s; see {self.router.log_path}")


def healthy_engines(router_url: str, admin_key: str | None) -> list[str]:
    """The URLs of the engines SGLang's router counts healthy (its `GET /workers`, a control route)."""
    workers = httpx.get(router_url + "/workers", headers=bearer(admin_key), timeout=5).json()["workers"]
    return [w["url"] for w in workers if w.get("is_healthy")]
