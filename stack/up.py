"""The whole stack on this machine, no Docker (`semipd up`): engine, tuner and dashboard, each a
`semipd` command in its own process with its log in a run folder, and a demo load. With more
than one engine, a fleet (stack/fleet.py): the engines on their own cores behind SGLang's router,
one tuner each; a fleet engine that exits is started again (the router takes it back). Where
Prometheus is installed, it scrapes every engine, tuner and the router.

The engine (`semipd serve --mode semi-pd`) and the dashboard start at once; the tuner once the
engine answers, with SLOs measured on it unloaded (7.5x, as `semipd calibrate-slo` does) unless
given. Parts are stopped in the reverse order. The engine's admin key and the tuner's key come
from the environment or are generated, and reach each part through its environment (the
dashboard gets none: its user gives the tuner's key).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import threading
from pathlib import Path

import yaml

from contract.access import ADMIN_KEY_ENV, TUNER_KEY_ENV
from loadtest.calibrate_slo import DEFAULT_WORKLOAD, calibrate
from loadtest.load_generator import replay
from loadtest.workload import parse_workload
from stack.fleet import Fleet, device_groups, fleet_devices, semipd_engine
from stack.prometheus_config import scrape_config
from stack.server_process import SEMIPD, ServerProcess

TRACE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "azure_llm_2023_conv.csv"
# Five minutes of the conversation trace, lengths scaled to the tiny model's 2,048-token context.
TRACE_DEMO = f"trace:{TRACE},duration=300,len_scale=0.25,max_prompt=1024,max_output=256"
MAX_RESTARTS = 3  # of one fleet engine, before `semipd up` gives up on it and stops
PROMETHEUS = "prometheus"  # Debian's package
SYNTHETIC_DEMO = "poisson:rate=3,prompt=lognormal(256,1),output=lognormal(64,0.8),count=900"


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class DemoLoad:
    """Replays a workload in a loop (fresh prompts each round) on a thread, until stopped."""

    def __init__(self, url: str, requests, api: str = "openai"):
        self.url, self.requests, self.api = url, requests, api
        self.stopping = threading.Event()
        self.sent = self.failed = 0
        self.thread = threading.Thread(target=self._run, name="demo-load", daemon=True)

    def _run(self) -> None:
        round_ = 0
        while not self.stopping.is_set():
            asyncio.run(replay(self.url, self.requests, 1000, on_done=self._count, seed=20_000 + round_, api=self.api))
            round_ += 1

    def _count(self, record) -> None:
        if self.stopping.is_set():
            return  # requests cut short by the shutdown are not the engine's failures
        self.sent += 1
        self.failed += not record.ok


def demo_workload(spec: str | None):
    """(spec, requests) of the demo load; by default the trace slice, or a synthetic load without the trace."""
    if spec is None:
        spec = TRACE_DEMO if TRACE.is_file() else SYNTHETIC_DEMO
    return spec, parse_workload(spec)


def measured_slos(engine_url: str, ttft_slo_s: float | None, tpot_slo_s: float | None) -> tuple[float, float, str]:
    """(TTFT SLO, TPOT SLO, where they come from): those given; either one missing is 7.5x the
    engine's unloaded latency, measured."""
    if ttft_slo_s and tpot_slo_s:
        return ttft_slo_s, tpot_slo_s, "given"
    measured = calibrate(engine_url, parse_workload(DEFAULT_WORKLOAD)[:10], 1000)
    tight = measured["tight"]
    return (ttft_slo_s or tight["ttft_slo_s"], tpot_slo_s or tight["tpot_slo_s"],
            f"7.5x unloaded (TTFT {measured['ttft_p50_s'] * 1e3:.0f} ms, TPOT {measured['tpot_p50_s'] * 1e3:.1f} ms)")


def stack_keys(environ, run_dir: Path) -> tuple[dict[str, str], list[str]]:
    """({variable: key} for the engine's admin key and the tuner's key, the names of those generated
    here): taken from the environment where set, else new ones; written to run_dir/keys.env (0600)."""
    keys, generated = {}, []
    for name in (ADMIN_KEY_ENV, TUNER_KEY_ENV):
        keys[name] = environ.get(name) or secrets.token_urlsafe(18)
        if not environ.get(name):
            generated.append(name)
    path = run_dir / "keys.env"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("".join(f"{name}={key}\n" for name, key in keys.items()))
    return keys, generated


def fleet_ports(engine_port: int, tuner_port: int, engines: int) -> dict[str, list[int]]:
    """The ports of a stack's engines and tuners: one engine on `engine_port`; a fleet's router
    there and its engines on the ports after it; tuners from `tuner_port` on."""
    engine_ports = [engine_port] if engines == 1 else [engine_port + 1 + i for i in range(engines)]
    return {"engines": engine_ports, "tuners": [tuner_port + i for i in range(engines)]}


class Stack:
    """The engine(s), dashboard and tuner processes (and the demo load) of one `semipd up`."""

    def __init__(self, run_dir: Path, host: str, engine_port: int, tuner_port: int, dashboard_port: int,
                 model: str | None = None, split: str | None = None, policy: str = "mpc", serve_args=(),
                 engines: int = 1, router: str = "cache-aware", router_metrics_port: int = 29000,
                 prometheus_port: int | None = None):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir, self.host, self.policy = run_dir, host, policy
        self.local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.ports = fleet_ports(engine_port, tuner_port, engines)
        self.url = {name: f"http://{self.local}:{port}" for name, port in
                    (("engine", engine_port), ("tuner", tuner_port), ("dashboard", dashboard_port))}
        plain = {k: v for k, v in os.environ.items() if k not in (ADMIN_KEY_ENV, TUNER_KEY_ENV)}
        self.keys, self.generated_keys = stack_keys(os.environ, run_dir)
        self.env = {**plain, **self.keys, "PYTHONUNBUFFERED": "1"}
        serve = [*(["--split", split] if split else []), *(["--model", model] if model else []), *serve_args]
        self.fleet = None
        if engines == 1:
            self.engines = [ServerProcess([*SEMIPD, "serve", "--mode", "semi-pd", "--host", host, "--port",
                                           str(engine_port), *serve], self.url["engine"], run_dir / "engine.log",
                                          self.env)]
        else:
            unit, devices = fleet_devices()
            groups = device_groups(devices, engines, unit)
            self.fleet = Fleet(run_dir, host, engine_port, self.ports["engines"], groups, self.env, router,
                               router_metrics_port, [semipd_engine(g, host, p, serve, unit)
                                                     for g, p in zip(groups, self.ports["engines"])], unit)
            self.engines = self.fleet.engines
        self.tuner_urls = [f"http://{self.local}:{port}" for port in self.ports["tuners"]]
        # A fleet's dashboard shows every engine (its fleet view) and one at a time below it.
        fleet_args = [f"--router-metrics={self.fleet.metrics_url}"] if self.fleet else []
        self.dashboard = ServerProcess([*SEMIPD, "dashboard", *(f"--tuner={url}" for url in self.tuner_urls),
                                        "--engine", self.engines[0].url, *fleet_args, "--host", host,
                                        "--port", str(dashboard_port)],
                                       self.url["dashboard"], run_dir / "dashboard.log",
                                       {**plain, "PYTHONUNBUFFERED": "1"})
        self.prometheus = None
        if prometheus_port:  # scraping every engine, every tuner and the router
            config = scrape_config([e.url.removeprefix("http://") for e in self.engines],
                                   [u.removeprefix("http://") for u in self.tuner_urls],
                                   f"{self.local}:{router_metrics_port}" if self.fleet else None)
            (run_dir / "prometheus.yml").write_text(yaml.safe_dump(config))
            self.url["prometheus"] = f"http://{self.local}:{prometheus_port}"
            self.prometheus = ServerProcess(
                [PROMETHEUS, f"--config.file={run_dir / 'prometheus.yml'}", f"--storage.tsdb.path={run_dir / 'prometheus'}",
                 f"--web.listen-address={host}:{prometheus_port}"], self.url["prometheus"], run_dir / "prometheus.log")
        self.restarts = {}  # fleet engine index -> restarts so far
        self.tuners: list[ServerProcess] = []
        self.parts: list[tuple[str, ServerProcess]] = []  # the started ones, in order
        self.load: DemoLoad | None = None

    def launch(self) -> None:
        """Start the engine(s) (and the router) and the dashboard, without waiting for them."""
        self.parts += self.fleet.launch() if self.fleet else [("engine", self.engines[0].launch())]
        self.parts.append(("dashboard", self.dashboard.launch()))
        if self.prometheus:
            self.parts.append(("prometheus", self.prometheus.launch()))

    def wait_engines(self, timeout_s: float) -> float:
        """Until the engine(s) answer (and the router counts them all healthy); seconds it took."""
        if self.fleet:
            self.fleet.wait_ready(timeout_s)
        else:
            self.engines[0].wait_ready(timeout_s)
        return max(e.ready_after_s for e in self.engines)

    def start_tuners(self, ttft_slo_s: float, tpot_slo_s: float) -> None:
        """Start a tuner on each engine (a fresh store in the run folder) and wait until they answer."""
        for i, (engine, port, url) in enumerate(zip(self.engines, self.ports["tuners"], self.tuner_urls)):
            name = "tuner" if len(self.engines) == 1 else f"tuner-{i}"
            tuner = ServerProcess([*SEMIPD, "tune", "--engine", engine.url, "--policy", self.policy,
                                   "--ttft-slo", f"{ttft_slo_s:.4f}", "--tpot-slo", f"{tpot_slo_s:.4f}",
                                   "--host", self.host, "--port", str(port),
                                   "--store", str(self.run_dir / f"{name}.db"), "--fresh"],
                                  url, self.run_dir / f"{name}.log", self.env)
            self.parts.append((name.replace("-", " "), tuner.launch()))
            self.tuners.append(tuner)
        for tuner in self.tuners:
            tuner.wait_ready(60)

    def wait_dashboard(self) -> None:
        self.dashboard.wait_ready(120, health_path="/_stcore/health")

    def start_demo(self, requests) -> None:
        # through SGLang's router, token-id prompts go to /generate (it refuses them on /v1/completions)
        self.load = DemoLoad(self.url["engine"], requests, "sglang" if self.fleet else "openai")
        self.load.thread.start()

    def exited(self) -> tuple[str, ServerProcess] | None:
        """The first started part whose process has exited, with its name; None while all run."""
        dead = [(name, p) for name, p in self.parts if p.process.poll() is not None]
        return dead[0] if dead else None

    def restart_engine(self, name: str) -> bool:
        """Start a fleet engine again that exited (named "engine I"), as it was started; the
        router's health checks take it back when it answers. False for any other part, and for an
        engine that already needed MAX_RESTARTS: then something is wrong with it, not transient."""
        if not self.fleet or not name.startswith("engine "):
            return False
        index = int(name.split()[1])
        self.restarts[index] = self.restarts.get(index, 0) + 1
        if self.restarts[index] > MAX_RESTARTS:
            return False
        old = self.fleet.engines[index]
        new = ServerProcess(old.command, old.url, self.run_dir / f"engine-{index}.{self.restarts[index]}.log", old.env)
        self.fleet.engines[index] = new  # (self.engines is the same list)
        self.parts[[n for n, _ in self.parts].index(name)] = (name, new.launch())
        return True

    def stop(self) -> None:
        """Stop the demo load and every started part, the last started first."""
        if self.load:
            self.load.stopping.set()
        for _, part in reversed(self.parts):
            part.stop()
