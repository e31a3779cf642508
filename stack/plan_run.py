"""The processes of a plan launched on this machine (`semipd plan --launch`): its instances (behind
SGLang's router when more than one, stack/fleet.py's Fleet) and a tuner per semi-PD instance.

The commands come ready-made (cli/plan_launch.py builds them); this module starts, watches and
stops them: every part logs to the run folder, and the last started stops first.
"""

from __future__ import annotations

from pathlib import Path

from stack.fleet import Fleet
from stack.server_process import ServerProcess


class PlanRun:
    """`commands[i]` serves `ports[i]` on `groups[i]` (cores); with `routed`, the router serves
    `router_port`, else the one instance is the URL for clients. `tuners[i]`: the tuner command of
    instance i and its port, or None."""

    def __init__(self, run_dir: Path, commands: list[list[str]], ports: list[int], groups: list[list[int]],
                 env: dict, routed: bool, router_port: int, router_policy: str, metrics_port: int,
                 tuners: list[tuple[list[str], int] | None]):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir, self.fleet = run_dir, None
        if routed:
            self.fleet = Fleet(run_dir, "127.0.0.1", router_port, ports, groups, env, router_policy, metrics_port,
                               commands)
            self.instances = self.fleet.engines
        else:
            self.instances = [ServerProcess(commands[0], f"http://127.0.0.1:{ports[0]}", run_dir / "instance.log",
                                            env)]
        self.tuners = [ServerProcess(tuner[0], f"http://127.0.0.1:{tuner[1]}", run_dir / f"tuner-{i}.log", env)
                       if tuner else None for i, tuner in enumerate(tuners)]
        self.parts: list[tuple[str, ServerProcess]] = []  # the started ones, in order

    @property
    def url(self) -> str:
        """The one URL for clients."""
        return self.fleet.router.url if self.fleet else self.instances[0].url

    def launch(self) -> None:
        """Start the instances (and the router), without waiting."""
        self.parts += self.fleet.launch() if self.fleet else [("instance", self.instances[0].launch())]

    def wait_ready(self, timeout_s: float) -> None:
        """Until every instance answers (and the router counts them all healthy); then start the
        tuners and wait for them."""
        if self.fleet:
            self.fleet.wait_ready(timeout_s)
        else:
            self.instances[0].wait_ready(timeout_s)
        started = [(f"tuner {i}", t.launch()) for i, t in enumerate(self.tuners) if t]
        self.parts += started
        for _, tuner in started:
            tuner.wait_ready(60)

    def exited(self) -> tuple[str, ServerProcess] | None:
        """The first started part whose process has exited, with its name; None while all run."""
        return next(((name, p) for name, p in self.parts if p.process.poll() is not None), None)

    def pids(self) -> list[int]:
        return [pid for _, part in self.parts for pid in part.pids()]

    def stop(self) -> None:
        for _, part in reversed(self.parts):
            part.stop()
