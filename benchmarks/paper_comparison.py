"""Reproduce the semi-PD paper's headline comparison in the simulator; writes docs/paper-comparison.md.

A100-80GB roofline, Llama-3-8B, the Azure conversation trace's request lengths (those with
prompt + output < 2048 tokens, DistServe's ShareGPT filter) with Poisson arrivals, tight SLOs
TTFT 0.3 s / TPOT 0.15 s (the paper's ShareGPT tight SLOs for Llama-3-8B).
Systems: unified with chunked prefill (vLLM-S: decode batched with a 1024-token prefill chunk),
unified prefill-first (SGLang's default: prefill steps stall decode),
disaggregated 1P1D (2 GPUs, KV over NVLink), semi-PD 100/100 (both phases may use the whole GPU)
and semi-PD dynamic (the `semipd` policy). Rates are per GPU. Also: how close the roofline comes
to measured A100 times (Vidur's per-operator profile, DistServe's fitted OPT-13B model).

    python benchmarks/paper_comparison.py [--requests 2000] [--out docs/paper-comparison.md]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from loadtest.bench import plot_attainment
from loadtest.report import goodput, summarize
from loadtest.workload import Request, load_azure_trace, with_poisson_arrivals
from policies import get_policy, load_params
from simulator.perf_model import Work, build_model, prefill_work
from simulator.simulation import simulate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TRACE = SHARED / "azure_llm_2023_conv.csv"
TTFT_SLO, TPOT_SLO = 0.3, 0.15
RATES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]  # per GPU
# semi-PD goodput / baseline's, paper section 7 (vLLM-S = chunked prefill; SGLang's default
# prefill-first scheduling was compared by E2E latency only, so no goodput ratio is given for it)
PAPER = {"unified": 1.55, "unified prefill-first": None, "disagg": 1.62, "semi-pd 100/100": 1.11}
DYNAMIC = {"overlap": 1, "min_pct": 30.0, "step_pct": 10.0, "max_steps": 3, "window": 2}


def systems():
    semipd = get_policy("semipd")
    return {
        "unified": dict(system="unified", batching="mixed", chunk_size=1024),
        "unified prefill-first": dict(system="unified", batching="prefill-first"),
        "disagg": dict(system="disagg", instances=(1, 1)),
        "semi-pd 100/100": dict(system="semi-pd", split=(100, 100)),
        "semi-pd dynamic": dict(system="semi-pd", split=(100, 100), policy=semipd,
                                policy_params=load_params("semipd", overrides=DYNAMIC)),
        "semi-pd mpc (ours)": dict(system="semi-pd", split=(100, 100), policy=get_policy("mpc"),
                                   policy_params=load_params("mpc", overrides={"overlap": 1, "min_pct": 30.0})),
    }


def unloaded_slos(requests, factor: float = 7.5) -> tuple[float, float]:
    """The paper's method: `factor` x the median TTFT and TPOT of requests served alone."""
    alone = [Request(60.0 * i, r.prompt_len, r.output_len) for i, r in enumerate(requests[:50])]
    records, _ = simulate(build_model("a100-80gb", "llama-3-8b"), alone, "unified", 1.0, 1.0)
    s = summarize(records)
    return round(factor * s["ttft_p50_s"], 3), round(factor * s["tpot_p50_s"], 3)


def attainment_curves(requests, slo: tuple[float, float]) -> dict:
    model = build_model("a100-80gb", "llama-3-8b")
    curves = {}
    for name, options in systems().items():
        options = dict(options)
        system = options.pop("system")
        curve = []
        for rate in RATES:
            devices = 2 if system == "disagg" else 1
            timed = with_poisson_arrivals(requests, rate * devices, seed=0)
            started = time.perf_counter()
            records, sim = simulate(model, timed, system, *slo, **options)
            s = summarize(records, *slo)
            curve.append({"rate_per_gpu": rate, "attainment": s["slo_attainment"],
                          "ttft_ok": s["ttft_attainment"], "tpot_ok": s["tpot_attainment"],
                          "ttft_p90_s": s["ttft_p90_s"], "tpot_p90_s": s["tpot_p90_s"],
                          "splits": sorted({tuple(d["new"]) for d in sim.decisions}), "wall_s": time.perf_counter() - started})
        curves[name] = {"curve": curve, "goodput": goodput({c["rate_per_gpu"]: c["attainment"] for c in curve})}
        print(f"SLOs {slo}: {name:22} goodput {curves[name]['goodput']:.2f} req/s/GPU", flush=True)
    return curves


def plot(curves: dict, path: Path, slo) -> None:
    results = [{"label": name, "goodput_rps": c["goodput"],
                "rates": [{"rate": p["rate_per_gpu"], "slo_attainment": p["attainment"]} for p in c["curve"]]}
               for name, c in curves.items()]
    plot_attainment(results, str(path), f"simulated: A100-80GB, Llama-3-8B; TTFT {slo[0]} s, TPOT {slo[1]} s",
                    "request rate per GPU (req/s)")


def vidur_check() -> list[tuple[int, float, float]]:
    """Linear layers of one Llama-3-8B layer on A100: Vidur's measured median vs our roofline."""
    path = SHARED / "gpu-profiles/vidur/compute/a100/meta-llama/Meta-Llama-3-8B/mlp.csv"
    ops = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
    model = build_model("a100-80gb", "llama-3-8b")
    h = model.hardware
    per_layer_params = 4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336
    rows = {}
    for row in csv.DictReader(open(path)):
        n = int(row["num_tokens"])
        if row["num_tensor_parallel_workers"] == "1" and n in (1, 16, 64, 256, 1024, 4096, 16384) and n not in rows:
            measured = sum(float(row[f"time_stats.{op}.median"]) for op in ops) / 1e3
            compute = 2 * per_layer_params * n / (h.peak_flops * h.compute_efficiency)
            memory = 2 * per_layer_params / (h.mem_bandwidth * h.bandwidth_efficiency)
            rows[n] = (n, measured, max(compute, memory))
    return [rows[n] for n in sorted(rows)]


def distserve_check() -> list[tuple[str, float, float]]:
    """OPT-13B TP1 on A100-80GB: DistServe's fitted latency model vs our roofline (no overhead)."""
    fit = json.loads((SHARED / "gpu-profiles/distserve/profiler-a100-80g.distserve.json").read_text())["facebook/opt-13b"]["1"]
    model = build_model("a100-80gb", "opt-13b")
    out = []
    for length in (128, 512, 1024, 2048):
        a, b, c = fit["prefill"]
        theirs = (a + b * length + c * length ** 2) / 1e3
        out.append((f"prefill {length} tokens", theirs, model.step_time(prefill_work([(length, 0)]), 1.0)))
    for batch, context in ((1, 512), (16, 512), (64, 1024)):
        a, b, c = fit["decoding_smallbs"]
        theirs = (a + b * batch * context + c * batch) / 1e3
        out.append((f"decode batch {batch}, context {context}", theirs,
                    model.step_time(Work(decode_batch=batch, decode_context=batch * context), 1.0)))
    return out


def comparison(title: str, curves: dict, slo, figure: str) -> list[str]:
    dyn = curves["semi-pd dynamic"]["goodput"]
    lines = [f"## {title}: TTFT {slo[0]} s, TPOT {slo[1]} s", "", f"![attainment vs rate]({figure})", "",
             "| rate/GPU | " + " | ".join(curves) + " |", "|---|" + "---|" * len(curves)]
    for i, rate in enumerate(RATES):
        lines.append(f"| {rate} | " + " | ".join(f"{c['curve'][i]['attainment']:.1%}" for c in curves.values()) + " |")
    lines += ["", "| semi-PD dynamic over | goodput (req/s/GPU) | ratio, ours | ratio, paper |", "|---|---|---|---|"]
    for name, paper in PAPER.items():
        base = curves[name]["goodput"]
        ratio = f"{dyn / base:.2f}x" if base > 0 else "inf"
        lines.append(f"| {name} | {base:.2f} vs {dyn:.2f} | {ratio} | {f'{paper:.2f}x' if paper else '-'} |")
    mpc = curves["semi-pd mpc (ours)"]["goodput"]
    lines += ["", f"Our `mpc` policy: {mpc:.2f} req/s/GPU ({mpc / dyn:.2f}x the paper's policy).", "",
              "Splits the paper's policy chose (percent of SMs, prefill/decode) and which SLO held:", ""]
    for point in curves["semi-pd dynamic"]["curve"]:
        lines.append(f"- {point['rate_per_gpu']}/s: {', '.join(f'{a}/{b}' for a, b in point['splits']) or 'kept 100/100'}"
                     f" (TTFT ok {point['ttft_ok']:.0%}, TPOT ok {point['tpot_ok']:.0%})")
    return lines + [""]


def report(sections: list[tuple[str, dict, tuple, str]], requests) -> str:
    lines = [
        "# Simulated reproduction of the semi-PD paper's comparison",
        "",
        "Generated by `python benchmarks/paper_comparison.py` (do not edit by hand). Everything here is",
        "the simulator (`semipd simulate`) on its A100-80GB roofline profile; no GPU was used.",
        "",
        f"Setup: Llama-3-8B (TP1), {len(requests)} requests with the Azure LLM conversation trace's",
        "lengths, those with prompt + output < 2048 tokens as DistServe prepared ShareGPT (mean prompt",
        f"{sum(r.prompt_len for r in requests) / len(requests):.0f}, mean output "
        f"{sum(r.output_len for r in requests) / len(requests):.0f} tokens), Poisson arrivals; goodput =",
        "highest rate per GPU with >= 90% of requests meeting both SLOs. Unified = chunked prefill with",
        "decode batched into each step (vLLM-S, chunk 1024); unified prefill-first = SGLang's default (a",
        "prefill step runs alone, decode waits); disaggregated = 1 prefill + 1 decode GPU, KV over",
        f"NVLink; semi-PD dynamic = the `semipd` policy (paper Algorithm 1) with {DYNAMIC}.",
        "Two sets of tight SLOs: the paper's numbers for Llama-3-8B on ShareGPT, and the paper's method",
        "(7.5x the latency of a request served alone) applied to this simulator.",
        "",
    ]
    for title, curves, slo, figure in sections:
        lines += comparison(title, curves, slo, figure)
    curves = [c for _, c, _, _ in sections]
    wall = sum(p["wall_s"] for c in curves for s in c.values() for p in s["curve"])
    lines += [f"{sum(len(s['curve']) for c in curves for s in c.values())} simulations in {wall:.0f} s on 2 CPU cores.", ""]
    lines += ["## How close the roofline is to measured A100 times", "",
              "Linear layers (QKV, O, gate/up, down) of one Llama-3-8B layer, Vidur's measured A100 medians",
              "(`../shared/data/gpu-profiles/vidur`, MIT, Agrawal et al. MLSys 2024) vs the roofline:", "",
              "| tokens | measured | roofline | roofline / measured |", "|---|---|---|---|"]
    for n, measured, ours in vidur_check():
        lines.append(f"| {n} | {measured * 1e3:.3f} ms | {ours * 1e3:.3f} ms | {ours / measured:.2f} |")
    lines += ["", "Whole steps of OPT-13B (TP1), DistServe's latency model fitted on A100-80GB",
              "(`../shared/data/gpu-profiles/distserve`, Apache-2.0, Zhong et al. OSDI 2024) vs the roofline",
              "(with its 2 ms step overhead):", "", "| step | DistServe fit | roofline | ratio |", "|---|---|---|---|"]
    for what, theirs, ours in distserve_check():
        lines.append(f"| {what} | {theirs * 1e3:.1f} ms | {ours * 1e3:.1f} ms | {ours / theirs:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "paper-comparison.md"))
    args = parser.parse_args()
    out = Path(args.out)
    # DistServe's ShareGPT preparation keeps prompt + output < 2048 tokens; the same filter here
    requests = [r for r in load_azure_trace(TRACE) if r.prompt_len + r.output_len < 2048][: args.requests]
    sections = []
    for i, (title, slo) in enumerate([("The paper's tight SLOs", (TTFT_SLO, TPOT_SLO)),
                                      ("7.5x this simulator's unloaded latency", unloaded_slos(requests))]):
        curves = attainment_curves(requests, slo)
        figure = out.with_name(f"{out.stem}-{i + 1}.png")
        plot(curves, figure, slo)
        sections.append((title, curves, slo, figure.name))
    raw = Path("out/paper-comparison.json")
    raw.parent.mkdir(exist_ok=True)
    raw.write_text(json.dumps([[t, c, s] for t, c, s, _ in sections], indent=1))
    text = report(sections, requests)
    why = out.with_name(out.stem + "-why.md")
    if why.exists():  # the hand-written explanation of where we differ, kept beside the numbers
        text += "\n" + why.read_text()
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
