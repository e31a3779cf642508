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
ENV_DEVICE = "SEMIPD_DEVICE"
ENV_PREFILL_TIMEOUT = "SEMIPD_PREFILL_TIMEOUT"
ENV_STORAGE = "SEMIPD_STORAGE"
ENV_GPU_PARTITION = "SEMIPD_GPU_PARTITION"
STORAGE_CHOICES = ("files", "ipc")
GPU_PARTITION_CHOICES = ("mps", "green-contexts")  # the two-process engine's on a GPU
PREFILL_TIMEOUT_RANGE_S = (0.5, 3600.0)
REPARTITION_CHOICES = ("live", "standby")
CPU_SPLIT = "1,1"  # the default split on CPU (cores); on GPU the menu's most even SM pair
GPU_MPS_SPLIT = "50,100"  # GPU two-process default (percent of SMs): decode keeps all, prefill half
# SGLang flags that PD multiplexing (GPU semi-pd) cannot run with: flag -> (the value it needs, or
# None for a flag it refuses outright; what the flag is).
PDMUX_CONFLICTS = {"--pp-size": ("1", "pipeline parallelism"),
                   "--disaggregation-mode": ("null", "disaggregation (semi-pd is its alternative on one GPU)"),
                   "--chunked-prefill-size": ("-1", "chunked prefill (it prefills whole prompts layer by layer; "
                                                    "-1 is set for you)"),
                   "--enable-lora": (None, "LoRA"), "--lora-paths": (None, "LoRA"),
                   "--pdmux-config-path": (None, "its own stream-group table (semipd builds the groups from "
                                                 "its menu of SM splits)")}


def configure(split_text: str | None, port: int, lend_idle_cores: bool = False, frontend_cores: str = "all",
              prefill_pipeline: int = 2, repartition: str = "live", device: str = "cpu",
              prefill_timeout_s: float = 60.0, storage: str = "files", gpu_partition: str = "mps") -> str:
    """Check the split for this machine and export the settings; returns the control endpoint.

    Raises engine.partition.InvalidSplit with the valid range, ValueError for a bad combination.
    On GPU the split (SMs) is checked against the menu when the scheduler starts, which reads the
    device; here only its form."""
    from engine.partition import parse_split
    from engine.partition.cpu import CpuCores

    if repartition not in REPARTITION_CHOICES:
        raise ValueError(f"--repartition {repartition!r}: valid are {', '.join(REPARTITION_CHOICES)}")
    if storage not in STORAGE_CHOICES:
        raise ValueError(f"--storage {storage!r}: valid are {', '.join(STORAGE_CHOICES)}")
    if gpu_partition not in GPU_PARTITION_CHOICES:
        raise ValueError(f"--gpu-partition {gpu_partition!r}: valid are {', '.join(GPU_PARTITION_CHOICES)}")
    if gpu_partition != "mps" and (device == "cpu" or storage != "ipc"):
        raise ValueError(f"--gpu-partition {gpu_partition}: the two-process engine's on a GPU, with --storage ipc")
    low, high = PREFILL_TIMEOUT_RANGE_S
    if not low <= prefill_timeout_s <= high:  # (NaN fails too)
        raise ValueError(f"--prefill-timeout {prefill_timeout_s} is out of range {low:g}..{high:g} seconds")
    if device == "cpu":
        split_text = split_text or CPU_SPLIT
        CpuCores(frontend=frontend_cores).check(parse_split(split_text))
        if repartition == "standby" and lend_idle_cores:
            raise ValueError("--repartition standby gives the prefill worker its share once, at start; "
                             "--lend-idle-cores moves it every step: use one or the other")
    elif storage == "ipc":  # the paper's two processes on a GPU, partitioned by MPS or green contexts
        from engine.partition.mps import PERCENT_VARIABLE, MpsPrefillShare, check_mps_daemon

        cpu_only = [flag for flag, used in (("--lend-idle-cores", lend_idle_cores),
                                            ("--frontend-cores", frontend_cores != "all")) if used]
        if cpu_only:
            raise ValueError(f"{', '.join(cpu_only)}: CPU only; on a GPU the workers' shares are SMs")
        if gpu_partition == "mps":
            split_text = split_text or GPU_MPS_SPLIT
            MpsPrefillShare().check(parse_split(split_text))
            problem = check_mps_daemon()
            if problem:
                raise ValueError(f"--storage ipc on a GPU partitions it with MPS: {problem}")
            repartition = "standby"  # an MPS client's share is fixed when it starts
        else:
            if split_text:  # SM counts, checked against the device when the owner starts
                parse_split(split_text)
            split_text = split_text or ""
            if repartition == "standby":
                raise ValueError("--repartition standby: green contexts move both workers live at a batch boundary")
            percent = os.environ.get(PERCENT_VARIABLE)
            if percent not in (None, "100"):
                raise ValueError(f"{PERCENT_VARIABLE}={percent} overrides green-context partitions: unset it")
    else:
        if split_text:
            parse_split(split_text)
        cpu_only = [flag for flag, used in (("--lend-idle-cores", lend_idle_cores),
                                            ("--frontend-cores", frontend_cores != "all"),
                                            ("--repartition standby", repartition == "standby")) if used]
        if cpu_only:
            raise ValueError(f"{', '.join(cpu_only)}: CPU only; on GPU semi-pd runs on SGLang's PD "
                             "multiplexing (unless --storage ipc), one process whose split moves between "
                             "stream groups")
        split_text = split_text or ""
    endpoint = f"ipc:///tmp/semipd-control-{port}-{os.getpid()}.sock"
    os.environ[ENV_SPLIT] = split_text
    os.environ[ENV_CONTROL] = endpoint
    os.environ[ENV_LEND_IDLE] = "1" if lend_idle_cores else "0"
    os.environ[ENV_FRONTEND] = frontend_cores
    os.environ[ENV_PIPELINE] = str(prefill_pipeline)
    os.environ[ENV_REPARTITION] = repartition
    os.environ[ENV_DEVICE] = device
    os.environ[ENV_PREFILL_TIMEOUT] = str(prefill_timeout_s)
    os.environ[ENV_STORAGE] = storage
    os.environ[ENV_GPU_PARTITION] = gpu_partition
    return endpoint


def remove_endpoint(endpoint: str) -> None:
    path = endpoint.removeprefix("ipc://")
    if os.path.exists(path):
        os.unlink(path)


def flag_value(args: list[str], flag: str) -> str | None:
    """The value given to `flag` in `args` ('--flag V' or '--flag=V'), '' for a bare flag, None if absent."""
    for i, arg in enumerate(args):
        if arg == flag:
            following = args[i + 1] if i + 1 < len(args) else ""
            return "" if following.startswith("--") else following
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def two_process_argv(passthrough: list[str], device: str, gpu_partition: str = "mps") -> list[str]:
    """The user's SGLang flags plus what the two-process engine needs; on a GPU, ValueError naming
    each flag or setting whose memory legacy CUDA IPC cannot share, and (green contexts) CUDA
    graphs left on."""
    if device != "cpu" and gpu_partition == "green-contexts" and "--disable-cuda-graph" not in passthrough:
        raise ValueError("--gpu-partition green-contexts runs decode on a green context's stream, where graphs "
                         "captured on the whole GPU are not replayed (one graph set per split is not built): add "
                         "--disable-cuda-graph, or use --gpu-partition mps (graphs on), or leave out --storage ipc "
                         "(SGLang's PD multiplexing: graphs per SM split)")
    if device != "cpu":
        from types import SimpleNamespace

        from engine.semipd.cuda_ipc_storage import CUSTOM_POOLS, refusals

        given = {flag.removeprefix("--").replace("-", "_"): flag_value(passthrough, flag) is not None
                 for flag in ("--enable-memory-saver", *CUSTOM_POOLS)}
        refused = refusals(SimpleNamespace(**given), dict(os.environ))
        if refused:
            raise ValueError("--storage ipc shares the owner's memory through CUDA IPC, which rules out: "
                             + "; ".join(refused))
    return passthrough if "--disable-overlap-schedule" in passthrough else [*passthrough, "--disable-overlap-schedule"]


def pdmux_argv(passthrough: list[str]) -> list[str]:
    """The user's SGLang flags plus what GPU semi-pd needs (SGLang's PD multiplexing); ValueError
    naming a flag it cannot run with."""
    for flag, (needed, what) in PDMUX_CONFLICTS.items():
        given = flag_value(passthrough, flag)
        if given is not None and given != needed:
            raise ValueError(f"{flag} {given}".strip() + f": semi-pd on GPU runs on SGLang's PD multiplexing, "
                             f"which does not support {what}")
    extra = [] if "--enable-pdmux" in passthrough else ["--enable-pdmux"]
    if flag_value(passthrough, "--chunked-prefill-size") is None:
        extra += ["--chunked-prefill-size", "-1"]
    if "--disable-overlap-schedule" not in passthrough:
        extra.append("--disable-overlap-schedule")
    return [*passthrough, *extra]


def semipd_scheduler_class():
    """The scheduler class of semi-pd mode (imported in the scheduler process only: heavy): the
    two-process owner on CPU, and on a GPU with --storage ipc; else on a GPU SGLang's pdmux."""
    if os.environ.get(ENV_DEVICE, "cpu") != "cpu" and os.environ.get(ENV_STORAGE, "files") != "ipc":
        from engine.semipd.pdmux_owner import PdmuxSemiPDScheduler

        return PdmuxSemiPDScheduler
    from engine.semipd.owner import SemiPDScheduler

    return SemiPDScheduler
