"""A plan on this machine (`semipd plan --launch`): which instance runs on which cores, with which
flags, or why the plan cannot run here. Pure: no processes, no files (cli/plan_launch.py builds
the command lines, stack/plan_run.py runs them).

On CPU a core is a device: an instance of TP x PP devices gets that many cores of its own, handed
out in order. Colocated instances are stock SGLang (`python -m sglang.launch_server`) with the
plan's scheduling (chunk size, mixed batching) and parallelism (TP and PP both run on SGLang's CPU
engine here: a rank per core over gloo, tried at TP2 and PP2 on the tiny model); semi-PD instances
are `semipd serve --mode semi-pd` with a `semipd tune` each. More than one instance: SGLang's
router in front, on `port`, the instances on the ports after it; one instance serves `port` itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.candidates import Plan

# Why a disaggregated plan does not run here (tried on SGLang 0.5.23 with every transfer backend
# PyPI has; docs/planner.md gives the details).
DISAGG_REASON = (
    "the KV transfer between SGLang's prefill and decode servers needs a GPU here: with mooncake "
    "(mooncake-transfer-engine-non-cuda over TCP) both servers start, but the prefill server's KV send "
    "allocates pinned memory and records a CUDA event, and dies on the first request ('Found no NVIDIA "
    "driver'); nixl is published for CUDA only and registers the KV cache as GPU memory; mori and ascend "
    "need AMD GPUs and Ascend NPUs; fake moves no KV (warm-up only)")
SEMIPD_TP_REASON = ("semipd's CPU engine runs semi-pd mode on one rank (its prefill worker has no "
                    "tensor-parallel group)")


class CannotRunHere(ValueError):
    """A plan, or a part of it, that this machine cannot run; the message says which and why."""


@dataclass(frozen=True)
class Instance:
    kind: str               # "sglang" (stock launch_server) | "semi-pd" (semipd serve)
    cores: tuple[int, ...]
    port: int
    args: tuple[str, ...]   # flags beyond model, host, port and semipd's CPU defaults
    ranks: int = 1          # SGLang's ranks, TP x PP, over `cores`
    tuner_port: int | None = None  # semi-PD: its `semipd tune`


@dataclass(frozen=True)
class LocalPlan:
    instances: tuple[Instance, ...]
    port: int             # the one URL's port: the router's, or the single instance's
    routed: bool          # SGLang's router in front of the instances

    @property
    def cores(self) -> tuple[int, ...]:
        return tuple(c for i in self.instances for c in i.cores)


def instance_flags(plan: Plan) -> tuple[str, ...]:
    """The plan's flags for one instance, as the GPU launch lines give them (less the GPU's)."""
    c = plan.candidate
    if c.kind == "semi-pd":
        return ()
    flags = ["--tp-size", str(c.instance.tp)] + (["--pp-size", str(c.instance.pp)] if c.instance.pp > 1 else [])
    flags += ["--chunked-prefill-size", str(c.chunk_size or 8192)]
    if c.batching == "mixed":
        flags.append("--enable-mixed-chunk")
    return tuple(flags)


def refusal(plan: Plan, cores: list[int], number: int = 1) -> str | None:
    """Why plan `number` cannot run on `cores` (None when it can)."""
    c = plan.candidate
    what = f"plan {number} ({c.label} x {plan.replicas})"
    if c.kind == "disagg":
        return f"{what} is disaggregated, and cannot run on this machine: {DISAGG_REASON}"
    if c.kind == "semi-pd" and c.instance.tp > 1:
        return f"{what} has semi-PD instances of TP{c.instance.tp}: {SEMIPD_TP_REASON}"
    if plan.devices > len(cores):
        return (f"{what} needs {plan.devices} devices, one core each, and this process may use "
                f"{len(cores)} core{'s' * (len(cores) != 1)} ({','.join(map(str, cores))}); plan for "
                f"--devices 1..{len(cores)} here, or run where more cores are free")
    return None


def local_plan(plan: Plan, cores: list[int], port: int, tuner_port: int, number: int = 1) -> LocalPlan:
    """Instances of `plan` on `cores` (sorted, in order); CannotRunHere says why not."""
    why = refusal(plan, cores, number)
    if why:
        raise CannotRunHere(why)
    c, cores = plan.candidate, sorted(cores)
    size, routed = c.instance.devices, plan.replicas > 1
    instances = []
    for i in range(plan.replicas):
        instances.append(Instance("semi-pd" if c.kind == "semi-pd" else "sglang",
                                  tuple(cores[i * size:(i + 1) * size]), port + 1 + i if routed else port,
                                  instance_flags(plan), c.instance.devices,
                                  tuner_port + i if c.kind == "semi-pd" else None))
    return LocalPlan(tuple(instances), port, routed)


def local_ports(plan: LocalPlan) -> dict[str, int]:
    """{what: port} of every listening part, to check before starting."""
    ports = {"the router (--launch-port)": plan.port} if plan.routed else {}
    for i, inst in enumerate(plan.instances):
        name = f"instance {i}" + (" (--launch-port)" if not plan.routed else f" (--launch-port + {i + 1})")
        ports[name] = inst.port
        if inst.tuner_port is not None:
            ports[f"instance {i}'s tuner (--tuner-port + {i})"] = inst.tuner_port
    return ports
