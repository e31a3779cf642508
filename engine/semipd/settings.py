"""What `semipd serve --mode semi-pd` hands from the launcher to SGLang's scheduler process.

Settings travel by environment (SGLang's spawned processes inherit it; its ServerArgs are sealed).
This module stays light: the launcher must not import prometheus_client (through the scheduler's
metrics) before SGLang has set PROMETHEUS_MULTIPROC_DIR, or the HTTP process's own metrics
would never reach /metrics.
"""

from __future__ import annotations

import os

ENV_SPLIT = "SEMIPD_SPLIT"
ENV_CONTROL = "SEMIPD_CONTROL_ENDPOINT"
ENV_LEND_IDLE = "SEMIPD_LEND_IDLE_CORES"
ENV_FRONTEND = "SEMIPD_FRONTEND_CORES"
ENV_PIPELINE = "SEMIPD_PREFILL_PIPELINE"
ENV_REPARTITION = "SEMIPD_REPARTITION"
REPARTITION_CHOICES = ("live", "standby")


def configure(split_text: str, port: int, lend_idle_cores: bool = False, frontend_cores: str = "all",
              prefill_pipeline: int = 2, repartition: str = "live") -> str:
    """Check the split for this machine and export the settings; returns the control endpoint.

    Raises engine.partition.InvalidSplit with the valid range, ValueError for a bad combination."""
    from engine.partition import parse_split
    from engine.partition.cpu import CpuCores

    CpuCores(frontend=frontend_cores).check(parse_split(split_text))
    if repartition not in REPARTITION_CHOICES:
        raise ValueError(f"--repartition {repartition!r}: valid are {', '.join(REPARTITION_CHOICES)}")
    if repartition == "standby" and lend_idle_cores:
        raise ValueError("--repartition standby gives the prefill worker its share once, at start; "
                         "--lend-idle-cores moves it every step: use one or the other")
    endpoint = f"ipc:///tmp/semipd-control-{port}-{os.getpid()}.sock"
    os.environ[ENV_SPLIT] = split_text
    os.environ[ENV_CONTROL] = endpoint
    os.environ[ENV_LEND_IDLE] = "1" if lend_idle_cores else "0"
    os.environ[ENV_FRONTEND] = frontend_cores
    os.environ[ENV_PIPELINE] = str(prefill_pipeline)
    os.environ[ENV_REPARTITION] = repartition
    return endpoint


def remove_endpoint(endpoint: str) -> None:
    path = endpoint.removeprefix("ipc://")
    if os.path.exists(path):
        os.unlink(path)


def semipd_scheduler_class():
    """The scheduler class of semi-pd mode (imported in the scheduler process only: heavy)."""
    from engine.semipd.owner import SemiPDScheduler

    return SemiPDScheduler
