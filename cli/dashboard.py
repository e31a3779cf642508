"""`semipd dashboard`: start the Streamlit control panel for a tuner (and its engine)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HELP = "the live control panel (Streamlit): SLOs, latencies, the split, tuner controls, searches"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = HELP
    parser.add_argument("--tuner", required=True, action="append", metavar="URL",
                        help="a `semipd tune` service; a fleet's: once per engine (the fleet view shows them all)")
    parser.add_argument("--engine", default="", metavar="URL",
                        help="the engine of a single tuner, for KV and radix cache panels (a fleet's tuners name theirs)")
    parser.add_argument("--router-metrics", default="", metavar="URL",
                        help="a fleet's SGLang router's Prometheus endpoint (e.g. http://127.0.0.1:29000/metrics): "
                             "which engines it counts healthy")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1); its controls ask for the tuner's key, and "
                             "are not offered beyond loopback for a tuner without one")
    parser.add_argument("--port", type=int, default=8501)


def run(args: argparse.Namespace, passthrough=()) -> int:
    import dashboard

    if not 0 < args.port < 65536:
        print(f"semipd dashboard: --port {args.port} is out of range 1..65535", file=sys.stderr)
        return 2
    app = Path(dashboard.__file__).with_name("app.py")
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", args.host,
               "--server.port", str(args.port), "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--", *(f"--tuner={url}" for url in args.tuner),
               "--engine", args.engine, "--router-metrics", args.router_metrics, "--bind", args.host]
    print(f"semipd dashboard: http://{args.host}:{args.port} (tuner {', '.join(args.tuner)})", flush=True)
    # app.py imports the dashboard package: the folder above it goes on the path of streamlit's process
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(app.parent.parent), os.environ.get("PYTHONPATH")]))}
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 0
