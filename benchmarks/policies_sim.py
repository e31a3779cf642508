"""Policies against the best static split chosen in hindsight, in the simulator.

A100-80GB roofline, Llama-3-8B, semi-PD with disjoint SM partitions (as green contexts give), on a
workload whose mix changes: 4 minutes decode-heavy, 4 minutes prefill-heavy, then a 1-minute burst. Every static split on
a 10% grid is simulated; the best of them, chosen after the fact, is the bar. Then the paper's
`semipd` policy and our `mpc` start from 50/50 and move the split live. Prints SLO attainment and
goodput (bisection over a rate scale) for each, and the ratios.

    python benchmarks/policies_sim.py [--ttft-slo 0.5] [--tpot-slo 0.05] [--params mpc:best.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policies import get_policy, load_params  # noqa: E402
from tuner.perf_model import build_model  # noqa: E402
from tuner.report import bisect_goodput, summarize  # noqa: E402
from tuner.simulate import simulate  # noqa: E402
from tuner.workload import parse_workload, scale_rate  # noqa: E402

# decode-heavy, then prefill-heavy, then a burst (`concat:` puts them one after another)
SHIFTING = ("concat:poisson:rate=10,prompt=uniform(100,400),output=uniform(200,600),count=2400,seed=1;"
            "poisson:rate=3,prompt=uniform(1200,2400),output=uniform(10,60),count=720,seed=2;"
            "poisson:rate=9,prompt=uniform(200,1200),output=uniform(50,300),count=540,seed=3")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ttft-slo", type=float, default=0.5)
    parser.add_argument("--tpot-slo", type=float, default=0.05)
    parser.add_argument("--workload", default=SHIFTING, metavar="SPEC", help="default: the shifting mix above")
    parser.add_argument("--params", nargs="*", default=[], metavar="POLICY:FILE",
                        help="also run a policy with searched parameters, e.g. mpc:best.json")
    args = parser.parse_args()
    model = build_model("a100-80gb", "llama-3-8b")
    slo = (args.ttft_slo, args.tpot_slo)

    workload = parse_workload(args.workload)

    def attainment(scale: float, split, policy=None, params=None) -> float:
        records, _ = simulate(model, scale_rate(workload, scale), "semi-pd", *slo, split=split,
                              policy=policy, policy_params=params)
        return summarize(records, *slo)["slo_attainment"]

    runs = {f"static {p}/{100 - p}": dict(split=(p, 100 - p)) for p in range(10, 100, 10)}
    best_static = max(runs, key=lambda name: attainment(1.0, **runs[name]))
    candidates = {
        "best static (hindsight): " + best_static.split()[1]: runs[best_static],
        "semipd (paper)": dict(split=(50, 50), policy=get_policy("semipd"), params=load_params("semipd")),
        "mpc (ours)": dict(split=(50, 50), policy=get_policy("mpc"), params=load_params("mpc")),
    }
    for spec in args.params:
        name, _, path = spec.partition(":")
        candidates[f"{name} ({path})"] = dict(split=(50, 50), policy=get_policy(name), params=load_params(name, path))
    candidates["static 100/100 (overlapping, reference)"] = dict(split=(100, 100))

    print(f"A100-80GB / Llama-3-8B roofline, semi-PD, SLOs TTFT {slo[0]} s TPOT {slo[1]} s; workload: {args.workload}")
    results = {}
    for name, options in candidates.items():
        results[name] = (attainment(1.0, **options), bisect_goodput(lambda s: attainment(s, **options), 0.25, 2.0))
    print(f"{'system':44} {'attainment':>10} {'goodput (x workload rate)':>26}")
    for name, (att, good) in results.items():
        print(f"{name:44} {att:10.1%} {good:26.3f}")
    names = list(results)
    best, semipd, mpc = (results[n] for n in names[:3])
    ratio = lambda a, b: f"{a / b:.3f}x" if b else "inf"
    for (label, a), (_, b) in (((names[1], semipd), (names[0], best)), ((names[2], mpc), (names[1], semipd)),
                               ((names[2], mpc), (names[0], best))):
        print(f"{label.split(' (')[0]:6} / {('best static' if b is best else 'semipd'):11}: attainment "
              f"{ratio(a[0], b[0])}, goodput {ratio(a[1], b[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
