"""`semipd simulate`: the digital twin. Replays a workload through a simulated server and prints
the same report as `semipd bench`: TTFT/TPOT percentiles, SLO attainment per rate, goodput.

Systems: unified (one worker, chunked prefill), disagg (P prefill + D decode instances, each on its
own device, KV sent over a link) and semi-pd (prefill and decode on shares of one device; the
split fixed by --split or moved by --policy). Step times come from a roofline of a named GPU and
model (`--list`) or from a profile that `semipd calibrate-model` measured on a running engine.
`--serving-system` names a real system (vLLM 0.6, SGLang, DistServe, semi-PD's two prototypes):
its scheduling, limits and engine time per step, each from a cited measurement.
"""

from __future__ import annotations

import argparse
import json
import sys

from cli.arguments import parse_pair, parse_rates

HELP = "simulate serving a workload (unified, disaggregated or semi-PD); same report as bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loadtest.workload import SPEC_HELP

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.split("\n\n")[0].split(": ", 1)[1] + "\n\n" + SPEC_HELP
    parser.add_argument("--list", action="store_true", help="print the hardware and model profiles and exit")
    parser.add_argument("--system", choices=("unified", "disagg", "semi-pd"),
                        help="the scheduling (default: the serving system's, else semi-pd)")
    parser.add_argument("--serving-system", metavar="NAME",
                        help="a named system (--list shows them): its scheduling, limits and engine time per "
                             "step; the flags given override it")
    parser.add_argument("--hardware", metavar="H", help="a100-80gb, a40, h100, h200; a GPU profile FILE.json (calibrate-model --from-vidur); or an engine's calibrated FILE.json")
    parser.add_argument("--model", metavar="M", help="llama-3-8b, llama-2-7b, llama-3-70b, deepseek-v2-lite, opt-13b (a GPU profile names its own)")
    parser.add_argument("--tp", type=int, help="tensor parallelism per instance (default: the model's)")
    parser.add_argument("--workload", metavar="SPEC", help="what arrives (see above)")
    parser.add_argument("--ttft-slo", type=float, metavar="S", help="TTFT SLO in seconds")
    parser.add_argument("--tpot-slo", type=float, metavar="S", help="TPOT SLO in seconds")
    parser.add_argument("--rates", metavar="R1,R2,...", help="re-time the workload to each mean rate (req/s)")
    parser.add_argument("--split", metavar="P,D",
                        help="semi-pd: the split at the start, in the hardware's units (percent of SMs on "
                             "GPUs, cores for a calibrated CPU); default half and half")
    parser.add_argument("--policy", metavar="NAME[:PARAMS.json]",
                        help="semi-pd: move the split with this policy (static, semipd), its parameters "
                             "from the file `semipd search` writes; default: keep --split")
    parser.add_argument("--instances", metavar="P,D", help="disagg: prefill and decode instances (default 1,1)")
    parser.add_argument("--link-gbps", type=float, help="disagg: KV link in GB/s (default: the hardware's NVLink)")
    parser.add_argument("--batching", choices=("mixed", "prefill-first"),
                        help="unified: decode batched with a prefill chunk (vLLM/Sarathi chunked prefill; the "
                             "default), or prefill steps first (SGLang's default)")
    parser.add_argument("--chunk-size", type=int, help="prefill tokens per step (default: the profile's)")
    parser.add_argument("--max-batch", type=int, help="running requests per instance (default: the profile's)")
    parser.add_argument("--tick", type=float, default=1.0, metavar="S", help="policy tick (default 1 s)")
    parser.add_argument("--switch-ms", type=float, default=1.0,
                        help="time for a new split to take effect (default 1 ms; measured on our CPU engine: 0.5 ms)")
    parser.add_argument("--label", help="name of the system in the report")
    parser.add_argument("--records", metavar="FILE", help="append one JSON line per simulated request")
    parser.add_argument("--plot", metavar="FILE.png", help="plot attainment vs rate")
    parser.add_argument("--json", action="store_true", help="print one JSON object and nothing else")


def parse_policy(text: str | None):
    """'NAME[:FILE]' -> (policy module, parameters), or (None, {}) for no policy."""
    from policies import get_policy, load_params

    if not text:
        return None, {}
    name, _, path = text.partition(":")
    return get_policy(name), load_params(name, path or None)


def run(args: argparse.Namespace, passthrough=()) -> int:
    from loadtest.bench import plot_attainment, print_report
    from loadtest.workload import WorkloadError, parse_workload
    from simulator.perf_model import ConfigError, build_model, describe_profiles
    from simulator.serving_systems import describe_systems, get_system
    from simulator.simulation import Simulation, simulate_rates

    if args.list:
        print(describe_profiles())
        print(describe_systems())
        return 0
    try:
        for flag in ("hardware", "workload", "ttft_slo", "tpot_slo"):
            if getattr(args, flag) is None:
                raise ValueError(f"--{flag.replace('_', '-')} is required (or --list)")
        for name in ("ttft_slo", "tpot_slo", "tick"):
            if getattr(args, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
        model = build_model(args.hardware, args.model, args.tp,
                            **({"chunk_size": args.chunk_size} if args.chunk_size and not args.hardware.endswith(".json") else {}))
        model.check_fits()
        variant = get_system(args.serving_system).options() if args.serving_system else {}
        system = args.system or variant.get("system", "semi-pd")
        options = {k: v for k, v in variant.items() if k != "system"}
        given = dict(split=parse_pair(args.split, "--split") if args.split else None,
                     instances=parse_pair(args.instances, "--instances") if args.instances else None,
                     batching=args.batching, chunk_size=args.chunk_size, max_batch=args.max_batch)
        options.update({k: v for k, v in given.items() if v is not None})
        policy, params = parse_policy(args.policy)
        if system != "semi-pd" and (policy or args.split):
            raise ValueError("--split and --policy apply to --system semi-pd only")
        rates = parse_rates(args.rates)
        requests = parse_workload(args.workload)
        options.update(policy=policy, policy_params=params, tick_s=args.tick, switch_s=args.switch_ms / 1e3,
                       link_bandwidth=args.link_gbps * 1e9 if args.link_gbps else None)
        Simulation(model, system, **options)  # checks the options before any work
    except (ValueError, WorkloadError, ConfigError) as exc:
        print(f"semipd simulate: {exc}", file=sys.stderr)
        return 2

    label = args.label or (args.serving_system or system) + (f" {args.split}" if args.split else "") \
        + (f" {args.policy}" if args.policy else "")
    result = simulate_rates(model, requests, system, args.ttft_slo, args.tpot_slo, rates, label, args.workload,
                            args.records, **options)
    if args.plot:
        plot_attainment([result], args.plot)
    if args.json:
        print(json.dumps(result))
        return 0
    print_report(result)
    per_rate, devices = result["rates"], result["devices"]
    print(f"devices: {devices}, goodput per device: {result['goodput_per_device_rps']:.2f} req/s; "
          f"retractions: {sum(r['retractions'] for r in per_rate)}; "
          f"split changes: {sum(len(r['decisions']) for r in per_rate)}; "
          f"simulated in {sum(r['sim_wall_s'] for r in per_rate):.1f} s")
    return 0
