"""`semipd up`: the whole stack on this machine, no Docker: engine, tuner, dashboard (and demo load).

Starts `semipd serve --mode semi-pd` on the embedded default model (built on first use) and the
dashboard at once; once the engine answers, measures it unloaded and sets tight SLOs (7.5x, as
`semipd calibrate-slo` does) unless --ttft-slo/--tpot-slo are given; starts `semipd tune`; with
--demo, replays a slice of the Azure trace again and again so the dashboard shows live traffic.
Prints the URLs. Ctrl-C (or SIGTERM) stops everything; a part that dies stops the rest, and its
log's last lines are printed. Logs and the tuner's store are kept in --run-dir. Flags it does not
know go to `semipd serve` (and so to SGLang).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
from pathlib import Path

HELP = "start engine (semi-pd), tuner and dashboard on this machine; --demo adds live load"
PASSTHROUGH = True  # the rest goes to `semipd serve`
SEMIPD = [sys.executable, "-m", "tuner.cli"]
TRACE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "azure_llm_2023_conv.csv"
# Five minutes of the conversation trace, lengths scaled to the tiny model's 2,048-token context.
TRACE_DEMO = f"trace:{TRACE},duration=300,len_scale=0.25,max_prompt=1024,max_output=256"
SYNTHETIC_DEMO = "poisson:rate=3,prompt=lognormal(256,1),output=lognormal(64,0.8),count=900"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.split(": ", 1)[1]
    parser.add_argument("--model", metavar="PATH", help="model folder (default: the embedded tiny model)")
    parser.add_argument("--split", default="1,1", metavar="P,D", help="the split at start (default 1,1)")
    parser.add_argument("--policy", default="mpc", help="the tuner's policy (default mpc)")
    parser.add_argument("--ttft-slo", type=float, metavar="S", help="TTFT SLO (default: 7.5x unloaded, measured)")
    parser.add_argument("--tpot-slo", type=float, metavar="S", help="TPOT SLO (default: 7.5x unloaded, measured)")
    parser.add_argument("--host", default="127.0.0.1", help="address all three bind (default 127.0.0.1)")
    parser.add_argument("--engine-port", type=int, default=30000)
    parser.add_argument("--tuner-port", type=int, default=31000)
    parser.add_argument("--dashboard-port", type=int, default=8501)
    parser.add_argument("--demo", action="store_true", help="replay a slice of a trace again and again")
    parser.add_argument("--demo-workload", metavar="SPEC",
                        help="what --demo replays (default: 5 minutes of ../shared/data's Azure conversation "
                             f"trace, lengths /4; without it: {SYNTHETIC_DEMO})")
    parser.add_argument("--run-dir", default="semipd-up", metavar="DIR",
                        help="logs and the tuner's store (default ./semipd-up)")
    parser.add_argument("--start-timeout", type=float, default=600, metavar="S",
                        help="give up if the engine does not answer within S seconds (default 600)")


def checked_ports(args) -> dict[str, int]:
    ports = {"--engine-port": args.engine_port, "--tuner-port": args.tuner_port,
             "--dashboard-port": args.dashboard_port}
    for flag, port in ports.items():
        if not 0 < port < 65536:
            raise ValueError(f"{flag} {port} is out of range 1..65535")
    if len(set(ports.values())) < 3:
        raise ValueError(f"the three ports must differ, got {ports}")
    for flag, port in ports.items():
        if port_in_use(args.host, port):
            raise ValueError(f"{flag} {port} is in use on {args.host}; stop what holds it or choose another port")
    return ports


def port_in_use(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class DemoLoad:
    """Replays a workload in a loop (fresh prompts each round) on a thread, until stopped."""

    def __init__(self, url: str, requests):
        self.url, self.requests = url, requests
        self.stopping = threading.Event()
        self.sent = self.failed = 0
        self.thread = threading.Thread(target=self._run, name="demo-load", daemon=True)

    def _run(self) -> None:
        from tuner.loadgen import replay

        round_ = 0
        while not self.stopping.is_set():
            asyncio.run(replay(self.url, self.requests, 1000, on_done=self._count, seed=20_000 + round_))
            round_ += 1

    def _count(self, record) -> None:
        if self.stopping.is_set():
            return  # requests cut short by the shutdown are not the engine's failures
        self.sent += 1
        self.failed += not record.ok


def demo_workload(spec: str | None):
    from tuner.workload import parse_workload

    if spec is None:
        spec = TRACE_DEMO if TRACE.is_file() else SYNTHETIC_DEMO
    return spec, parse_workload(spec)


def slos(args, engine_url: str) -> tuple[float, float, str]:
    if args.ttft_slo and args.tpot_slo:
        return args.ttft_slo, args.tpot_slo, "given"
    from tuner.calibrate_slo import DEFAULT_WORKLOAD, calibrate
    from tuner.workload import parse_workload

    measured = calibrate(engine_url, parse_workload(DEFAULT_WORKLOAD)[:10], 1000)
    tight = measured["tight"]
    return (args.ttft_slo or tight["ttft_slo_s"], args.tpot_slo or tight["tpot_slo_s"],
            f"7.5x unloaded (TTFT {measured['ttft_p50_s'] * 1e3:.0f} ms, TPOT {measured['tpot_p50_s'] * 1e3:.1f} ms)")


def run(args: argparse.Namespace, passthrough=()) -> int:
    from policies import POLICIES
    from tuner.launcher import ServerProcess, ServerStartError
    from tuner.workload import WorkloadError

    try:
        for name in ("ttft_slo", "tpot_slo"):
            value = getattr(args, name)
            if value is not None and not 0 < value < 3600:
                raise ValueError(f"--{name.replace('_', '-')} {value} is out of range (0, 3600) seconds")
        if args.policy not in POLICIES:
            raise ValueError(f"unknown --policy {args.policy!r}; valid policies: {', '.join(POLICIES)}")
        checked_ports(args)
        demo = demo_workload(args.demo_workload) if args.demo else None
    except (ValueError, WorkloadError) as exc:
        print(f"semipd up: {exc}", file=sys.stderr)
        return 2

    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    local = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = {name: f"http://{local}:{port}" for name, port in
           (("engine", args.engine_port), ("tuner", args.tuner_port), ("dashboard", args.dashboard_port))}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    engine = ServerProcess([*SEMIPD, "serve", "--mode", "semi-pd", "--split", args.split, "--host", args.host,
                            "--port", str(args.engine_port), *(["--model", args.model] if args.model else []),
                            *passthrough], url["engine"], run_dir / "engine.log", env)
    dashboard = ServerProcess([*SEMIPD, "dashboard", "--tuner", url["tuner"], "--engine", url["engine"],
                               "--host", args.host, "--port", str(args.dashboard_port)],
                              url["dashboard"], run_dir / "dashboard.log", env)
    parts: list[tuple[str, ServerProcess]] = []
    load = None
    # SIGTERM as Ctrl-C; and Ctrl-C even where the shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    try:
        model = args.model or "the tiny model (built on the first run)"
        print(f"semipd up: starting the engine ({model}, semi-pd, split {args.split}) and the dashboard; "
              f"logs in {run_dir}/", flush=True)
        parts += [("engine", engine.launch()), ("dashboard", dashboard.launch())]
        engine.wait_ready(args.start_timeout)
        print(f"semipd up: engine ready after {engine.ready_after_s:.0f} s; measuring it unloaded for SLOs",
              flush=True)
        ttft, tpot, origin = slos(args, url["engine"])
        tuner = ServerProcess([*SEMIPD, "tune", "--engine", url["engine"], "--policy", args.policy,
                               "--ttft-slo", f"{ttft:.4f}", "--tpot-slo", f"{tpot:.4f}", "--host", args.host,
                               "--port", str(args.tuner_port), "--store", str(run_dir / "tuner.db"), "--fresh"],
                              url["tuner"], run_dir / "tuner.log", env)
        parts.append(("tuner", tuner.launch()))
        tuner.wait_ready(60)
        dashboard.wait_ready(120, health_path="/_stcore/health")
        if demo:
            load = DemoLoad(url["engine"], demo[1])
            load.thread.start()
        print(f"\nsemipd up: ready in {time.monotonic() - started:.0f} s\n"
              f"  dashboard  {url['dashboard']}\n"
              f"  engine     {url['engine']}  (SGLang API; split at /semipd/split, metrics at /metrics)\n"
              f"  tuner      {url['tuner']}/state  (policy {args.policy}; SLOs TTFT {ttft * 1e3:.0f} ms, "
              f"TPOT {tpot * 1e3:.1f} ms: {origin})\n"
              + (f"  demo load  {demo[0]}, {len(demo[1])} requests a round, in a loop\n" if demo else "")
              + "Ctrl-C stops everything.", flush=True)
        while True:
            time.sleep(1.0)
            dead = [(name, p) for name, p in parts if p.process.poll() is not None]
            if dead:
                name, p = dead[0]
                print(f"semipd up: the {name} exited with code {p.process.returncode}; stopping the rest. "
                      f"Last lines of {p.log_path}:\n{p.log_tail()}", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        return 0
    except (ServerStartError, RuntimeError, OSError) as exc:
        print(f"semipd up: {exc}", file=sys.stderr)
        return 1
    finally:
        for number in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up short
            signal.signal(number, signal.SIG_IGN)
        if load:
            load.stopping.set()
            print(f"semipd up: demo load: {load.sent} requests answered, {load.failed} of them failed", flush=True)
        for name, part in reversed(parts):
            part.stop()
        print("semipd up: stopped", flush=True)
