"""`semipd tune`: the tuner service. Moves a semi-PD engine's split live to keep TTFT and TPOT SLOs.

Every --interval seconds it reads the engine's metrics, asks the policy, and applies its split. It
serves its state over HTTP: GET /state (settings, windows of p50/p90/p99 and attainment, the
split, decisions with reasons, events), /decisions, /events, /metrics (Prometheus), /health;
POST /settings {"ttft_slo_s", "tpot_slo_s", "policy", "params", "enabled", "interval_s"} and
POST /split {"prefill": P, "decode": D} (set by hand). Settings, the policy's state and decisions
are kept in --store (SQLite): a restarted tuner resumes them (--fresh starts over).

Keys, best given in the environment (a command line is visible to every user of the machine):
SEMIPD_TUNER_KEY, this tuner's own, then required as 'Authorization: Bearer KEY' on its POST
routes (reads stay open); SEMIPD_ADMIN_KEY, the engine's admin key, sent with each split. Bound
beyond loopback (--host 0.0.0.0), the tuner refuses to start without its key.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

HELP = "the tuner service: move a semi-pd engine's split live to keep TTFT/TPOT SLOs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from contract.access import ADMIN_KEY_ENV, TUNER_KEY_ENV

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.split(": ", 1)[1]
    parser.add_argument("--engine", required=True, metavar="URL", help="a `semipd serve --mode semi-pd` engine")
    parser.add_argument("--prometheus", metavar="URL", help="read metrics from this Prometheus server instead")
    parser.add_argument("--policy", default="mpc", help="static, semipd or mpc (default mpc)")
    parser.add_argument("--params", metavar="FILE", help="policy parameters (JSON, as `semipd search` writes)")
    parser.add_argument("--study", metavar="NAME", help="take the parameters from this Optuna study's best trial")
    parser.add_argument("--storage", default="sqlite:///semipd-search.db",
                        help="the study's Optuna RDB URL (with --study), as `semipd search --storage` takes it")
    parser.add_argument("--ttft-slo", type=float, required=True, metavar="S")
    parser.add_argument("--tpot-slo", type=float, required=True, metavar="S")
    parser.add_argument("--interval", type=float, default=2.0, metavar="S", help="seconds between ticks (default 2)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=31000)
    parser.add_argument("--store", default="semipd-tuner.db", help="SQLite file for settings and decisions")
    parser.add_argument("--fresh", action="store_true", help="ignore the settings and policy state in --store")
    parser.add_argument("--admin-key", metavar="KEY",
                        help=f"the engine's admin key, if it has one (default: ${ADMIN_KEY_ENV})")
    parser.add_argument("--key", metavar="KEY",
                        help=f"this tuner's key, required on its POST routes (default: ${TUNER_KEY_ENV}; "
                             "none: they are open, and the tuner must bind loopback)")
    parser.add_argument("--off", action="store_true", help="start with the tuner observing only (no splits applied)")


def run(args: argparse.Namespace, passthrough=()) -> int:
    from contract.access import ADMIN_KEY_ENV, TUNER_KEY_ENV, check_exposure
    from tuner.control_loop import Settings
    from tuner.launch import policy_params, start_tuner

    key = args.key or os.environ.get(TUNER_KEY_ENV) or None
    admin_key = args.admin_key or os.environ.get(ADMIN_KEY_ENV) or None
    try:
        check_exposure(args.host, key, "the tuner", f"set {TUNER_KEY_ENV} (or --key KEY)")
        if args.params and args.study:
            raise ValueError("give --params or --study, not both")
        params = policy_params(args.policy, args.params, args.study, args.storage)
        settings = Settings(args.ttft_slo, args.tpot_slo, args.policy, params, not args.off, args.interval)
        tuner, server = start_tuner(args.engine, settings, args.store, args.host, args.port, admin_key,
                                    args.prometheus, fresh=args.fresh, key=key)
    except (ValueError, OSError) as exc:
        print(f"semipd tune: {exc}", file=sys.stderr)
        return 2
    s = tuner.settings
    print(f"semipd tune: {'resumed from ' + args.store if tuner.resumed else 'started'}; policy {s.policy}, "
          f"SLOs TTFT {s.ttft_slo_s} s / TPOT {s.tpot_slo_s} s, every {s.interval_s} s, "
          f"{'on' if s.enabled else 'off'}; state at http://{args.host}:{server.server_port}/state; "
          f"controls {'need its key' if key else 'open (no key; loopback only)'}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        tuner.run(stop)
    except KeyboardInterrupt:
        pass
    server.shutdown()
    return 0
