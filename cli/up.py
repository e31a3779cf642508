"""`semipd up`: the whole stack on this machine, no Docker: engine, tuner, dashboard (and demo load).

Starts `semipd serve --mode semi-pd` on the embedded default model (built on first use) and the
dashboard at once; once the engine answers, measures it unloaded and sets tight SLOs (7.5x, as
`semipd calibrate-slo` does) unless --ttft-slo/--tpot-slo are given; starts `semipd tune`; with
--demo, replays a slice of the Azure trace again and again so the dashboard shows live traffic.
Prints the URLs. Ctrl-C (or SIGTERM) stops everything; a part that dies stops the rest, and its
log's last lines are printed. Logs and the tuner's store are kept in --run-dir. Flags it does not
know go to `semipd serve` (and so to SGLang).

--engines N (N > 1) starts a fleet instead of one engine: N engines in semi-pd mode, each on its
own share of this machine's cores (or of its GPUs, where it has them), SGLang's router in front of
them on --engine-port (the one URL clients use; `--router cache-aware|round-robin`), the engines on
the ports after it, and one tuner per engine on --tuner-port and the ports after it. The router's worker routes need the
admin key. An engine that exits is started again (three times at most); the dashboard's fleet
view shows every engine and which ones the router counts healthy.

Where Prometheus is installed (Debian's `prometheus`), it scrapes every engine, tuner and router
on --prometheus-port; its configuration is written to --run-dir/prometheus.yml.

Keys: the engine's admin key and the tuner's key are taken from SEMIPD_ADMIN_KEY and
SEMIPD_TUNER_KEY, or generated; they are written to --run-dir/keys.env (readable by you only) and
the tuner's is printed: the dashboard's controls ask for it.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path

HELP = "start engine (semi-pd), tuner and dashboard on this machine; --demo adds live load"
PASSTHROUGH = True  # the rest goes to `semipd serve`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from stack.up import SYNTHETIC_DEMO

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.split(": ", 1)[1]
    parser.add_argument("--model", metavar="PATH", help="model folder (default: the embedded tiny model)")
    parser.add_argument("--split", metavar="P,D",
                        help="the split at start (default: 1,1 on CPU; on a GPU the most even of its SM splits)")
    parser.add_argument("--policy", default="mpc", help="the tuner's policy (default mpc)")
    parser.add_argument("--ttft-slo", type=float, metavar="S", help="TTFT SLO (default: 7.5x unloaded, measured)")
    parser.add_argument("--tpot-slo", type=float, metavar="S", help="TPOT SLO (default: 7.5x unloaded, measured)")
    parser.add_argument("--host", default="127.0.0.1", help="address all three bind (default 127.0.0.1)")
    parser.add_argument("--engine-port", type=int, default=30000)
    parser.add_argument("--tuner-port", type=int, default=31000)
    parser.add_argument("--dashboard-port", type=int, default=8501)
    parser.add_argument("--engines", type=int, default=1, metavar="N",
                        help="engines (default 1); more than one starts a fleet behind SGLang's router")
    parser.add_argument("--router", choices=("cache-aware", "round-robin"), default="cache-aware",
                        help="the router's policy, with --engines > 1 (default cache-aware)")
    parser.add_argument("--router-metrics-port", type=int, default=29000,
                        help="the router's Prometheus metrics, with --engines > 1 (default 29000)")
    parser.add_argument("--prometheus-port", type=int, default=9090, metavar="P",
                        help="Prometheus, where installed, scraping every engine, tuner and router on P "
                             "(default 9090; 0: none)")
    parser.add_argument("--demo", action="store_true", help="replay a slice of a trace again and again")
    parser.add_argument("--demo-workload", metavar="SPEC",
                        help="what --demo replays (default: 5 minutes of ../shared/data's Azure conversation "
                             f"trace, lengths /4; without it: {SYNTHETIC_DEMO})")
    parser.add_argument("--run-dir", default="semipd-up", metavar="DIR",
                        help="logs and the tuner's store (default ./semipd-up)")
    parser.add_argument("--start-timeout", type=float, default=600, metavar="S",
                        help="give up if the engine does not answer within S seconds (default 600)")


def checked_ports(args) -> dict[str, int]:
    from stack.fleet import device_groups, fleet_devices
    from stack.up import fleet_ports, port_in_use

    unit, devices = fleet_devices()
    device_groups(devices, args.engines, unit)  # ValueError naming the valid range
    more = fleet_ports(args.engine_port, args.tuner_port, args.engines)
    ports = {"--engine-port": args.engine_port, "--tuner-port": args.tuner_port,
             "--dashboard-port": args.dashboard_port}
    if args.prometheus_port:
        ports["--prometheus-port"] = args.prometheus_port
    if args.engines > 1:
        ports |= {f"engine {i}'s port (--engine-port + {i + 1})": p for i, p in enumerate(more["engines"])}
        ports |= {f"tuner {i}'s port (--tuner-port + {i})": p for i, p in enumerate(more["tuners"][1:], 1)}
        ports["--router-metrics-port"] = args.router_metrics_port
    for flag, port in ports.items():
        if not 0 < port < 65536:
            raise ValueError(f"{flag} {port} is out of range 1..65535")
    if len(set(ports.values())) < len(ports):
        raise ValueError(f"the ports must differ, got {ports}")
    for flag, port in ports.items():
        if port_in_use(args.host, port):
            raise ValueError(f"{flag} {port} is in use on {args.host}; stop what holds it or choose another port")
    return ports


def serving_lines(stack, policy: str) -> str:
    """The engine and tuner URLs, one line each (a fleet: the router, then each engine with its tuner)."""
    if stack.fleet is None:
        return (f"  engine     {stack.url['engine']}  (SGLang API; split at /semipd/split, metrics at /metrics)\n"
                f"  tuner      {stack.tuners[0].url}/state  (policy {policy})\n")
    lines = [f"  router     {stack.url['engine']}  (SGLang's router: the URL for clients; engines at its /workers, "
             f"with the admin key)\n"]
    for i, (engine, tuner, devices) in enumerate(zip(stack.engines, stack.tuners, stack.fleet.groups)):
        lines.append(f"  engine {i}   {engine.url}  ({stack.fleet.unit}s {','.join(map(str, devices))}); "
                     f"tuner {tuner.url}/state  (policy {policy})\n")
    return "".join(lines)


def tuner_key_shown(stack) -> str:
    from contract.access import TUNER_KEY_ENV

    keys = f"both keys in {stack.run_dir}/keys.env"
    if TUNER_KEY_ENV in stack.generated_keys:
        return f"{stack.keys[TUNER_KEY_ENV]}  (the dashboard's controls ask for it; {keys})"
    return f"from ${TUNER_KEY_ENV}  ({keys})"


def run(args: argparse.Namespace, passthrough=()) -> int:
    from loadtest.workload import WorkloadError
    from policies import POLICIES
    from stack.server_process import ServerStartError
    from stack.up import PROMETHEUS, Stack, demo_workload, measured_slos

    try:
        for name in ("ttft_slo", "tpot_slo"):
            value = getattr(args, name)
            if value is not None and not 0 < value < 3600:
                raise ValueError(f"--{name.replace('_', '-')} {value} is out of range (0, 3600) seconds")
        if args.policy not in POLICIES:
            raise ValueError(f"unknown --policy {args.policy!r}; valid policies: {', '.join(POLICIES)}")
        if args.prometheus_port and not shutil.which(PROMETHEUS):
            print("semipd up: Prometheus is not installed (`apt install prometheus`): not started", file=sys.stderr)
            args.prometheus_port = 0
        checked_ports(args)
        demo = demo_workload(args.demo_workload) if args.demo else None
    except (ValueError, WorkloadError) as exc:
        print(f"semipd up: {exc}", file=sys.stderr)
        return 2

    run_dir = Path(args.run_dir)
    stack = Stack(run_dir, args.host, args.engine_port, args.tuner_port, args.dashboard_port, args.model,
                  args.split, args.policy, passthrough, args.engines, args.router, args.router_metrics_port,
                  args.prometheus_port)
    url = stack.url
    # SIGTERM as Ctrl-C; and Ctrl-C even where the shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    try:
        model = args.model or "the tiny model (built on the first run)"
        engines = ("the engine" if args.engines == 1
                   else f"{args.engines} engines ({stack.fleet.unit}s {stack.fleet.groups}), the router")
        print(f"semipd up: starting {engines} ({model}, semi-pd, split {args.split or 'default'}) and the dashboard; "
              f"logs in {run_dir}/", flush=True)
        stack.launch()
        ready_after = stack.wait_engines(args.start_timeout)
        what = "engine" if args.engines == 1 else f"{args.engines} engines and the router"
        print(f"semipd up: {what} ready after {ready_after:.0f} s; measuring {'it' if args.engines == 1 else 'one'} "
              f"unloaded for SLOs", flush=True)
        ttft, tpot, origin = measured_slos(stack.engines[0].url, args.ttft_slo, args.tpot_slo)
        stack.start_tuners(ttft, tpot)
        stack.wait_dashboard()
        if demo:
            stack.start_demo(demo[1])
        print(f"\nsemipd up: ready in {time.monotonic() - started:.0f} s\n"
              f"  dashboard  {url['dashboard']}\n"
              + serving_lines(stack, args.policy)
              + f"  SLOs       TTFT {ttft * 1e3:.0f} ms, TPOT {tpot * 1e3:.1f} ms ({origin})\n"
              + (f"  prometheus {url['prometheus']}  (scraping every engine and tuner"
                 f"{', and the router' if stack.fleet else ''})\n" if stack.prometheus else "")
              + f"  tuner key  {tuner_key_shown(stack)}\n"
              + (f"  demo load  {demo[0]}, {len(demo[1])} requests a round, in a loop\n" if demo else "")
              + "Ctrl-C stops everything.", flush=True)
        while True:
            time.sleep(1.0)
            dead = stack.exited()
            if dead:
                name, p = dead
                if stack.restart_engine(name):
                    print(f"semipd up: {name} exited with code {p.process.returncode}; starting it again "
                          f"(the router sends it nothing until it answers). Last lines of {p.log_path}:\n"
                          f"{p.log_tail()}", file=sys.stderr, flush=True)
                    continue
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
        load = stack.load
        if load:
            load.stopping.set()
            print(f"semipd up: demo load: {load.sent} requests answered, {load.failed} of them failed", flush=True)
        stack.stop()
        print("semipd up: stopped", flush=True)
