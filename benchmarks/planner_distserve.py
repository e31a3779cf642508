"""The planner on DistServe's chatbot case; writes docs/planner-distserve.md.

OPT-13B on the simulator's A100-80GB roofline with our engine's (SGLang's) engine time per step,
TTFT 0.25 s and TPOT 0.1 s for 90% of requests (DistServe's artifact,
evaluation/ae-scripts/e2e/_plot.py, chatbot / ShareGPT). ShareGPT itself is not here: the workload
is `dataset:sharegpt-distserve`, the Azure conversation trace's lengths scaled to DistServe's
published ShareGPT means (loadtest/paper_datasets.py; as benchmarks/paper_comparison.py).
Runs `semipd plan`'s search over 8 devices (timed, from an empty cache), then over 3 (the paper's
budget), simulates DistServe's choice (prefill TP2, decode TP1) and its P/D ratios with the same
simulator, and compares step times with DistServe's fitted A100 latency model.

    python benchmarks/planner_distserve.py [--requests 300] [--out docs/planner-distserve.md]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

from loadtest.report import percentile
from loadtest.paper_datasets import DATASETS, dataset_requests
from planner.candidates import Candidate, Parallel, kv_capacity
from planner.evaluate import Evaluator
from planner.search import search
from policies import get_policy, load_params
from simulator.hardware_profiles import HARDWARE, MODELS
from simulator.perf_model import Work, prefill_work

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TRACE = SHARED / "azure_llm_2023_conv.csv"
FIT = SHARED / "gpu-profiles" / "distserve" / "profiler-a100-80g.distserve.json"
MAX_TOKENS = SHARED / "gpu-profiles" / "distserve" / "max_num_tokens.csv"
TTFT, TPOT = 0.25, 0.1
HW, MODEL = HARDWARE["a100-80gb"], MODELS["opt-13b"]
PAPER = Candidate("disagg", Parallel(2, 1), Parallel(1, 1), 1, 1, kv_link="nvlink")


def workload(count: int):
    return dataset_requests("sharegpt-distserve", str(TRACE), 1.0, count)


def evaluator(requests) -> Evaluator:
    # the planner's default semi-PD policy: mpc, both shares up to the whole GPU (start 100/100)
    return Evaluator(HW, MODEL, requests, TTFT, TPOT, 0.9, get_policy("mpc"), load_params("mpc", overrides={"overlap": 1}))


def distserve_times(requests) -> list[tuple[str, float, float, float, float]]:
    """Step times (ms): DistServe's fit vs our roofline at TP1 and TP2, at this workload's sizes."""
    fit = json.loads(FIT.read_text())["facebook/opt-13b"]
    ev = evaluator(requests)
    roof = {tp: ev.roofline(Parallel(tp, 1)) for tp in (1, 2)}
    prompts = [r.prompt_len for r in requests]
    context = sum(r.prompt_len + r.output_len / 2 for r in requests) / len(requests)
    rows = []
    for name, length in (("mean", round(sum(prompts) / len(prompts))), ("p90", round(percentile(prompts, 90)))):
        theirs = [sum(c * length ** i for i, c in enumerate(fit[str(tp)]["prefill"])) for tp in (1, 2)]
        ours = [roof[tp].step_time(prefill_work([(length, 0)]), 1.0) * 1e3 for tp in (1, 2)]
        rows.append((f"prefill, {name} prompt ({length} tokens)", *theirs, *ours))
    for batch in (16, 48):
        ctx = round(batch * context)
        theirs = []
        for tp in (1, 2):
            f = fit[str(tp)]
            a, b, c = f["decoding_smallbs" if batch < f["decoding_large_small_bs_threshold"] else "decoding_largebs"]
            theirs.append(a + b * ctx + c * batch)
        ours = [roof[tp].step_time(Work(decode_batch=batch, decode_context=ctx), 1.0) * 1e3 for tp in (1, 2)]
        rows.append((f"decode, batch {batch} at mean context ({ctx} tokens)", *theirs, *ours))
    return rows


def distserve_kv_tokens() -> dict:
    out = {}
    for row in csv.DictReader(open(MAX_TOKENS)):
        if row["model"] == "facebook/opt-13b" and row["pp"] == "1":
            out[int(row["tp"])] = int(row["max_num_tokens"])
    return out


def table(plans, limit: int) -> list[str]:
    lines = ["| # | kind | unit | replicas | devices | goodput (req/s) | per device |", "|---|---|---|---|---|---|---|"]
    for i, p in enumerate(plans[:limit], 1):
        lines.append(f"| {i} | {p.candidate.kind} | {p.candidate.label} | {p.replicas} | {p.devices} | "
                     f"{p.goodput:.2f} | {p.per_device:.2f} |")
    return lines


def report(requests, r8, cost8, r3, cost3, ev, extra) -> str:
    mean_prompt = sum(r.prompt_len for r in requests) / len(requests)
    mean_output = sum(r.output_len for r in requests) / len(requests)
    best8, best3 = r8["best_by_kind"], r3["best_by_kind"]
    disagg8 = best8["disagg"]
    paper_g = extra["paper"]
    p_alone, d_alone = r8["prefill_alone"], r8["decode_alone"]
    ratios = extra["ratios"]
    best_ratio = max(ratios, key=lambda kv: kv[1] / kv[0].devices)
    kv_ours = {tp: kv_capacity(HW, MODEL, Parallel(tp, 1)) for tp in (1, 2, 4)}
    kv_theirs = distserve_kv_tokens()
    context = mean_prompt + mean_output / 2
    cuts = [1 - ours / theirs for _, *t in extra["times"] for ours, theirs in zip(t[2:], t[:2])]
    shorter = (min(cuts), max(cuts))
    widths = " or ".join(str(w) for w in sorted({p.candidate.instance.devices for p in r8["plans"]
                                                 if p.candidate.kind == "disagg"
                                                 and p.per_device >= disagg8.per_device * 0.98}))
    most = max(r8["plans"], key=lambda p: (p.goodput, p.per_device))
    ties = [p for p in r8["plans"] if p.candidate.kind == "disagg" and p.per_device >= disagg8.per_device * 0.98]
    lines = [
        "# The planner on DistServe's chatbot case",
        "",
        "Generated by `python benchmarks/planner_distserve.py` (do not edit by hand). Everything here is the",
        "simulator (`semipd plan`, `semipd simulate`) on its A100-80GB roofline, each step paying our engine's",
        "(SGLang's) engine time, overlapped with the GPU's (simulator/serving_systems.py); no GPU was used.",
        "",
        f"Setup: OPT-13B, TTFT <= {TTFT} s and TPOT <= {TPOT} s for 90% of requests (DistServe's chatbot",
        "SLOs, artifact `evaluation/ae-scripts/e2e/_plot.py`). ShareGPT is not available here: the lengths",
        f"are {len(requests)} of the Azure LLM conversation trace's, scaled to DistServe's published ShareGPT means",
        f"({DATASETS['sharegpt-distserve'].prompt_mean} / {DATASETS['sharegpt-distserve'].output_mean}) within its filter "
        f"(prompt + output < 2048): here mean prompt {mean_prompt:.0f}, mean output {mean_output:.0f} tokens. Poisson arrivals,",
        f"each run spanning {ev.span_s:.0f} s (3 x (TTFT SLO + mean output x TPOT SLO)); goodput = highest rate with",
        ">= 90% of requests meeting both SLOs, by bisection (6 steps). Semi-PD uses the `mpc` policy with",
        "both shares allowed the whole GPU (start 100/100). 8 GPUs per node.",
        "",
        "## 8 GPUs: the planner's ranking",
        "",
        *table(r8["plans"], 12),
        "",
        "Best of each kind:",
        "",
        *[f"- {kind}: {p.candidate.label} x {p.replicas} = {p.goodput:.2f} req/s on {p.devices} GPUs, "
          f"**{p.per_device:.2f} req/s per GPU**" for kind, p in best8.items()],
        "",
        f"Search cost (8 GPUs, empty cache, one process on a 2-core machine): **{cost8['evaluated']} candidates "
        f"evaluated** by simulation ({cost8['searches']} goodput searches: every colocated and semi-PD unit,",
        f"every prefill and decode instance alone, and the {cost8['verify']} best of {cost8['estimated']} disaggregated",
        f"units by DistServe's estimate), {cost8['simulations']} simulations, **{cost8['wall_s']:.0f} s wall time**",
        f"({cost8['cpu_s']:.0f} s of CPU: the rest is other work sharing the machine). The 3-GPU search after it reused the cache: "
        f"{cost3['new_searches']} new goodput searches, {cost3['wall_s']:.1f} s.",
        "",
        "## Each instance alone (DistServe's Algorithm 1)",
        "",
        "Goodput of one instance: prefill with TTFT only (one-token outputs), decode with TPOT only (prompts",
        "arrive prefilled), and the KV cache it holds.",
        "",
        "| instance | GPUs | prefill (req/s) | per GPU | decode (req/s) | per GPU | KV tokens |",
        "|---|---|---|---|---|---|---|",
        *[f"| {par.label} | {par.devices} | {p_alone[par]:.2f} | {p_alone[par] / par.devices:.2f} | "
          f"{d_alone[par]:.2f} | {d_alone[par] / par.devices:.2f} | {kv_capacity(HW, MODEL, par):,} |"
          for par in sorted(p_alone, key=lambda p: (p.devices, p.tp))],
        "",
        "## The disaggregated choice: planner vs DistServe",
        "",
        "| placement | GPUs | goodput (req/s) | per GPU |",
        "|---|---|---|---|",
        f"| DistServe's choice: 1 prefill TP2 + 1 decode TP1 | 3 | {paper_g:.2f} | {paper_g / 3:.2f} |",
        *[f"| same instances, 1P TP2 + {c.decode_count}D TP1 | {c.devices} | {g:.2f} | {g / c.devices:.2f} |"
          for c, g in ratios if c.decode_count > 1],
        f"| planner, <= 3 GPUs: {best3['disagg'].candidate.label} x {best3['disagg'].replicas} | "
        f"{best3['disagg'].devices} | {best3['disagg'].goodput:.2f} | {best3['disagg'].per_device:.2f} |",
        f"| planner, 8 GPUs: {disagg8.candidate.label} x {disagg8.replicas} | {disagg8.devices} | "
        f"{disagg8.goodput:.2f} | {disagg8.per_device:.2f} |",
        f"| colocated TP1, prefill-first (one GPU, vLLM-like baseline) | 1 | {extra['colocated_tp1']:.2f} | "
        f"{extra['colocated_tp1']:.2f} |",
        f"| planner's best of any kind, <= 3 GPUs: {r3['plans'][0].candidate.label} x {r3['plans'][0].replicas} | "
        f"{r3['plans'][0].devices} | {r3['plans'][0].goodput:.2f} | {r3['plans'][0].per_device:.2f} |",
        "",
        f"Disaggregated units within 2% of the best per GPU on 8 GPUs: "
        + "; ".join(f"{p.candidate.label} ({p.per_device:.2f})" for p in ties) + ".",
        "",
        "### Why they differ",
        "",
        f"- **The P/D ratio.** DistServe's artifact simulates each candidate as one prefill instance paired",
        "  with one decode instance (our reading of `simdistserve/benchmarks/search_configs.py`; the paper's",
        "  Algorithm 1 then replicates each side to the target rate), and its chosen 3-GPU placement is such",
        "  a 1:1 pair. Here,",
        f"  prefill TP2 alone sustains {p_alone[Parallel(2, 1)]:.2f} req/s within the TTFT SLO but decode TP1 alone only "
        f"{d_alone[Parallel(1, 1)]:.2f} within TPOT,",
        f"  so a 1:1 pair is decode-bound ({paper_g:.2f} req/s, {paper_g / 3:.2f} per GPU). With the same instances, "
        f"{best_ratio[0].prefill_count}P:{best_ratio[0].decode_count}D serves",
        f"  {best_ratio[1]:.2f} req/s, {best_ratio[1] / best_ratio[0].devices:.2f} per GPU "
        f"({best_ratio[1] / best_ratio[0].devices / (paper_g / 3):.1f}x the 1:1 pair). Within 3 GPUs the planner",
        f"  drops the second prefill GPU instead: TP1 prefill ({p_alone[Parallel(1, 1)]:.2f} req/s) already keeps up with a TP1",
        "  decode instance.",
        f"- **Decode is bound by KV memory here.** A TP1 decode instance holds {kv_ours[1]:,} KV tokens (90% of",
        f"  80 GB less 4 GB for activations and 25.7 GB of weights; DistServe's `max_num_tokens.csv`, its",
        f"  per-configuration token limit, lists {kv_theirs.get(1, 0):,} for TP1),",
        f"  about {kv_ours[1] / context:.0f} requests at this workload's mean context ({context:.0f} tokens). TP2 holds "
        f"{kv_ours[2]:,}",
        f"  ({kv_ours[2] / kv_ours[1]:.1f}x: the weights halve per GPU) and TP4 {kv_ours[4]:,}, so decode goodput per GPU "
        f"grows with width",
        f"  (TP1 {d_alone[Parallel(1, 1)]:.2f}, TP2 {d_alone[Parallel(2, 1)] / 2:.2f}, TP4 {d_alone[Parallel(4, 1)] / 4:.2f} "
        "req/s per GPU) and the planner's 8-GPU choice decodes on a wide instance.",
        "  DistServe's simulator caps a decode batch at a hard-coded 50,000 context tokens whatever the",
        "  parallelism (per its code), so there a wider decode instance gains no room.",
        "- **Step times.** Our roofline against DistServe's fitted A100 model (ms, no queueing):",
        "",
        "  | step | DistServe TP1 | DistServe TP2 | ours TP1 | ours TP2 |",
        "  |---|---|---|---|---|",
        *[f"  | {name} | {a:.1f} | {b:.1f} | {c:.1f} | {d:.1f} |" for name, a, b, c, d in extra["times"]],
        "",
        "  On prefill the two agree: under a 0.25 s TTFT a TP2 prefill instance is the better use of a GPU",
        f"  (here {p_alone[Parallel(2, 1)] / 2:.2f} vs {p_alone[Parallel(1, 1)]:.2f} req/s per GPU: queueing rewards a "
        "shorter service time, DistServe's M/D/1",
        f"  argument), and the prefill instances of the best 8-GPU units are {widths} GPUs wide. Our TP2",
        f"  speed-up is larger ({extra['times'][0][3] / extra['times'][0][4]:.2f}x vs "
        f"{extra['times'][0][1] / extra['times'][0][2]:.2f}x at the mean prompt: the roofline splits",
        "  FLOPs and bytes exactly over TP and adds only the all-reduces), and our steps are "
        f"{shorter[0]:.0%} to {shorter[1]:.0%}",
        "  shorter than their fit, so each instance takes higher rates here.",
        "- **Workload and criterion.** DistServe's ShareGPT keeps multi-turn prefixes, and its search tests",
        "  P90 TTFT and P90 TPOT separately; here the lengths have its means but the Azure trace's shape, and",
        "  attainment is joint (a request counts if it meets both).",
        f"- **KV transfer** is simulated here (NVLink, {extra['kv_ms']:.1f} ms for a mean prompt between TP2 and TP1) and",
        "  not in DistServe's simulator; inside a node it is too small to change a choice.",
        "",
        "## What the planner answers for these 8 GPUs",
        "",
        f"Per GPU: semi-PD {best8['semi-pd'].per_device:.2f}, colocated {best8['colocated'].per_device:.2f}, "
        f"disaggregated {disagg8.per_device:.2f} req/s. Using all 8 GPUs, the most total goodput is "
        f"{most.candidate.label} x {most.replicas} ({most.goodput:.2f} req/s).",
        "Every kind runs on our engine here, so each pays SGLang's small engine time (docs/paper-comparison.md",
        "prices other engines: vLLM's and DistServe's own); disaggregation stores the weights on",
        "the prefill GPUs and again on the decode GPUs, where they take room the memory-bound decode needs",
        "for KV; semi-PD keeps one copy and one KV cache and lets prefill use the whole GPU while decode runs.",
        "These are simulated rankings on a roofline profile, not measurements.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "planner-distserve.md"))
    args = parser.parse_args()
    requests = workload(args.requests)
    ev = evaluator(requests)

    started, cpu = time.perf_counter(), time.process_time()
    r8 = search(ev, 8, progress=True)
    cost8 = {"evaluated": ev.searches, "searches": ev.searches, "simulations": ev.simulations,
             "wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu, "sim_wall_s": ev.sim_wall_s,
             "estimated": len(r8["disagg_estimates"]), "verify": min(8, len(r8["disagg_estimates"]))}
    print(f"8 GPUs: {cost8['evaluated']} candidates, {cost8['simulations']} simulations, {cost8['wall_s']:.0f} s "
          f"({cost8['cpu_s']:.0f} s CPU)", flush=True)
    before, started = ev.searches, time.perf_counter()
    r3 = search(ev, 3)
    cost3 = {"new_searches": ev.searches - before, "wall_s": time.perf_counter() - started}
    extra = {"paper": ev.unit_goodput(PAPER),
             "ratios": [(c, ev.unit_goodput(c)) for c in
                        (Candidate("disagg", Parallel(2, 1), Parallel(1, 1), 1, k, kv_link="nvlink") for k in (1, 2, 3, 4))],
             "colocated_tp1": ev.unit_goodput(Candidate("colocated", Parallel(1, 1), batching="prefill-first")),
             "times": distserve_times(requests)}
    mean_prompt = round(sum(r.prompt_len for r in requests) / len(requests))
    extra["kv_ms"] = ev.roofline(Parallel(2, 1)).kv_transfer_s(mean_prompt, ev.kv_bandwidth(PAPER)) * 1e3
    text = report(requests, r8, cost8, r3, cost3, ev, extra)
    Path(args.out).write_text(text)
    raw = Path("out/planner-distserve.json")
    raw.parent.mkdir(exist_ok=True)
    raw.write_text(json.dumps({"cost8": cost8, "cost3": cost3, "cpus": os.cpu_count(),
                               "plans8": [(p.candidate.label, p.replicas, p.goodput, p.per_device) for p in r8["plans"]],
                               "paper": extra["paper"]}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
