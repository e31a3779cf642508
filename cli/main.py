"""The `semipd` command: one sub-command per module of cli/, each with HELP, add_arguments and run.

Command modules are thin: argument parsing and printing; the work is in the library rooms they
call. Every command module is imported to build the parser, so they import their library inside
`run` (`add_arguments` takes only light constants for help texts) and nothing heavy (torch, sglang,
optuna, matplotlib, numpy) at module level: `semipd --help` and the tuner-side commands start fast
in processes that have neither torch nor sglang installed. `python -m cli` runs it too.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module; a module with PASSTHROUGH = True receives the arguments it does not know.
COMMANDS = {
    "serve": "cli.serve",
    "make-model": "cli.make_model",
    "bench": "cli.bench",
    "calibrate-slo": "cli.calibrate_slo",
    "simulate": "cli.simulate",
    "plan": "cli.plan",
    "calibrate-model": "cli.calibrate_model",
    "validate-profile": "cli.validate_profile",
    "tune": "cli.tune",
    "search": "cli.search",
    "dashboard": "cli.dashboard",
    "bench-overlap": "cli.bench_overlap",
    "up": "cli.up",
    "doctor": "cli.doctor",
}


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="semipd",
        description="SGLang-based LLM serving with prefill and decode on separate compute "
                    "partitions over unified storage.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = {}
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=module.HELP))
        modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, modules = build_parser()
    args, extra = parser.parse_known_args(argv)
    module = modules[args.command]
    if extra and not getattr(module, "PASSTHROUGH", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return module.run(args, extra) or 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
