"""The `semipd` command: one sub-command per module, each with HELP, add_arguments and run.

Command modules keep their heavy imports (torch, sglang) inside `run`, so `semipd --help` and the
tuner-side commands start fast in processes that have neither installed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module; a module with PASSTHROUGH = True receives the arguments it does not know.
COMMANDS = {
    "serve": "engine.serve",
    "make-model": "engine.model_factory",
    "bench": "tuner.bench",
    "calibrate-slo": "tuner.calibrate_slo",
    "simulate": "tuner.simulate",
    "plan": "tuner.plan",
    "calibrate-model": "tuner.calibrate_model",
    "tune": "tuner.tune",
    "search": "tuner.search",
    "dashboard": "dashboard.launch",
    "bench-overlap": "engine.bench_overlap",
    "up": "tuner.stack",
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
