"""Does a searched policy beat its defaults, on a workload the search did not see?

1. `semipd search` (50 trials, Optuna TPE, in the simulator: Llama-3-8B on the A100-80GB twin
   fitted to Vidur's measurements, semi-PD with
   disjoint splits) tunes a policy's parameters for SLO attainment on the training workload: the
   shifting mix of benchmarks/policies_sim.py at 1.3x its rate.
2. The defaults and the best parameters are then compared on a different workload: a 10-minute
   slice of the Azure conversation trace (real arrivals and lengths), by attainment at the trace's
   own rate and by goodput (bisection over a rate scale).

    python benchmarks/search_transfer.py [--policy mpc] [--trials 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from loadtest.report import bisect_goodput, summarize
from loadtest.workload import mean_rate, parse_workload, scale_rate
from policies import get_policy, load_params
from policies_sim import SHIFTING, VIDUR
from simulator.gpu_profile import calibrate_from_vidur, hardware_named
from simulator.perf_model import build_model
from simulator.simulation import simulate

ROOT = Path(__file__).resolve().parent.parent

TRACE = ROOT.parent / "shared" / "data" / "azure_llm_2023_conv.csv"
TEST = f"trace:{TRACE},start=1800,duration=600,max_prompt=2048,max_output=1024"
SLO = (0.5, 0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="mpc")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--out", default="out/search")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = parse_workload(SHIFTING)
    rate = 1.3 * mean_rate(train)
    best_file, db = out / f"{args.policy}-best.json", out / "search.db"
    twin = out / "a100-80gb-llama-3-8b.json"
    calibrate_from_vidur(VIDUR, "llama-3-8b", hardware_named("a100-80gb")).save(twin)
    db.unlink(missing_ok=True)
    command = [sys.executable, "-m", "cli.main", "search", "--policy", args.policy, "--workload", SHIFTING,
               "--ttft-slo", str(SLO[0]), "--tpot-slo", str(SLO[1]), "--trials", str(args.trials),
               "--objective", "attainment", "--rate", f"{rate:.3f}", "--split", "50,50",
               "--hardware", str(twin), "--storage", f"sqlite:///{db}", "--out", str(best_file)]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)
    found = json.loads(best_file.read_text())

    model = build_model(str(twin), "llama-3-8b")
    policy = get_policy(args.policy)
    variants = {"defaults": load_params(args.policy), "searched": load_params(args.policy, best_file)}

    def attainment(workload, params, scale=1.0):
        records, _ = simulate(model, scale_rate(workload, scale), "semi-pd", *SLO, split=(50, 50),
                              policy=policy, policy_params=params)
        return summarize(records, *SLO)["slo_attainment"]

    test = parse_workload(TEST)
    print(f"\ntraining: shifting mix at {rate:.2f} req/s (attainment, {found['trials']} trials): defaults "
          f"{found['default_value']:.1%}, searched {found['value']:.1%} ({found['value'] / found['default_value']:.3f}x)")
    print(f"test (not seen): Azure conv trace, 10 minutes, {len(test)} requests, {mean_rate(test):.2f} req/s")
    results = {name: (attainment(test, params), bisect_goodput(lambda s: attainment(test, params, s), 0.1, 3.0))
               for name, params in variants.items()}
    for name, (att, good) in results.items():
        print(f"  {name:9} attainment {att:6.1%}   goodput {good * mean_rate(test):5.2f} req/s")
    (d_att, d_good), (s_att, s_good) = results["defaults"], results["searched"]
    print(f"  searched / defaults: attainment {s_att / d_att:.3f}x, goodput "
          f"{s_good / d_good if d_good else float('inf'):.3f}x")
    print(f"searched parameters: {json.dumps(found['params'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
