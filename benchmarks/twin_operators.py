"""How close the GPU twin's operator and collective times come to measured ones.

Fits a GPU profile to each of Vidur's A100 compute profiles (Llama-2-7B, Llama-3-8B, Llama-3-70B)
and reports its fit error; predicts the A40's Llama-2-7B times from the A100 fit and the A40's
datasheet alone (the transfer error); and, for comparison, the plain roofline the curves replace.
Collectives: the fit error per topology. Medians of absolute relative error per operator, over
every token count and TP degree in the files.

    python benchmarks/twin_operators.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from simulator.gpu_profile import calibrate_from_vidur, validate
from simulator.hardware_profiles import HARDWARE
from simulator.network_model import collective_errors, fit_collectives
from simulator.operator_model import error_summary
from simulator.vidur_profiles import OPERATORS, read_collectives

VIDUR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpu-profiles" / "vidur"
A100 = {"llama-2-7b": "Llama-2-7b-hf", "llama-3-8b": "Meta-Llama-3-8B", "llama-3-70b": "Meta-Llama-3-70B"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    columns, plain_columns = {}, {}
    with tempfile.TemporaryDirectory() as work:
        for model, directory in A100.items():
            compute = VIDUR / "compute" / "a100" / "meta-llama" / directory
            profile = calibrate_from_vidur(compute, model, HARDWARE["a100-80gb"])
            columns[f"A100 {model} (fit)"] = profile.fit_error["operators"]
            plain_columns[f"A100 {model}"] = validate("a100-80gb", compute, model)
            if model == "llama-2-7b":
                path = Path(work) / "a100-llama-2-7b.json"
                profile.save(path)
                a40 = VIDUR / "compute" / "a40" / "meta-llama" / directory
                columns["A40 llama-2-7b (from the A100 fit + datasheet)"] = validate(str(path), a40, model)
                plain_columns["A40 llama-2-7b"] = validate("a40", a40, model)

    def table(title: str, cols: dict) -> None:
        print(f"\n{title}: median |relative error| per operator (all token counts and TP degrees)\n")
        print("| operator | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        for op in OPERATORS:
            print(f"| {op} | " + " | ".join(f"{c['per_operator'][op]['median_rel_error']:.1%}" for c in cols.values()) + " |")
        print("| **all** | " + " | ".join(f"**{c['median_rel_error']:.1%}** (max {c['max_rel_error']:.0%})"
                                         for c in cols.values()) + " |")

    table("Fitted curves", columns)
    table("Plain roofline (GEMMs only; elementwise operators predicted as 0)", plain_columns)
    gemms = [c["per_operator"][op]["median_rel_error"] for c in plain_columns.values()
             for op in ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")]
    print(f"\nplain roofline, GEMMs only: median of the per-operator medians {statistics.median(gemms):.1%}")

    print("\nCollectives: latency + bytes / bus bandwidth per (collective, GPUs, GPUs per node)\n")
    print("| topology | collective | GPUs | per node | latency us | bus GB/s | median error |")
    print("|---|---|---|---|---|---|---|")
    for topology in ("a100_dgx", "a100_pairwise_nvlink"):
        samples = read_collectives(VIDUR / "network" / topology)
        fits = fit_collectives(samples)
        errors = error_summary(collective_errors(fits, samples))["per_operator"]
        for f in fits:
            key = f"{f.collective}/{f.workers}x{f.devices_per_node}"
            print(f"| {topology} | {f.collective} | {f.workers} | {f.devices_per_node} | {f.latency_s * 1e6:.0f} | "
                  f"{f.bus_bandwidth / 1e9:.1f} | {errors[key]['median_rel_error']:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
