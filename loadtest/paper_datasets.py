"""The papers' datasets by their published length statistics, as workloads.

We cannot download ShareGPT, LongBench or HumanEval here, and the papers publish their means,
not their samples. So a dataset is drawn as: the (prompt, output) pairs of a real trace (the shape
of real traffic, with its correlation between the two), each column scaled so that, after the
dataset's preparation filter, its means are the published ones, and Poisson arrivals.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from loadtest.workload import Request, WorkloadError, gamma_arrivals, load_azure_trace


@dataclass(frozen=True)
class DatasetShape:
    name: str
    prompt_mean: float
    output_mean: float
    max_prompt: int | None  # the preparation's filter, in tokens
    max_total: int | None
    source: str


DISTSERVE_FIG7 = "DistServe (Zhong et al., OSDI 2024), Figure 7 (OPT tokenizer)"
DATASETS = {d.name: d for d in (
    DatasetShape("sharegpt-distserve", 755.5, 200.3, None, 2048,
                 f"{DISTSERVE_FIG7}: ShareGPT as DistServe prepared it, mean input 755.5, output 200.3; "
                 "requests of prompt + output < 2048 tokens"),
    DatasetShape("humaneval", 171.3, 98.2, None, None, f"{DISTSERVE_FIG7}: HumanEval, mean input 171.3, output 98.2"),
    DatasetShape("longbench", 1738.3, 90.7, None, None, f"{DISTSERVE_FIG7}: LongBench, mean input 1738.3, output 90.7"),
    DatasetShape("sharegpt-vllm", 161.3, 338.0, 1024, 2048,
                 "vLLM (Kwon et al., SOSP 2023), Figure 11: ShareGPT's first turn, mean input 161.31, output "
                 "337.99 (Llama tokenizer); sampled as vLLM's benchmark does (prompt <= 1024, prompt + output "
                 "<= 2048), which semi-PD's DistServe-based benchmark reuses"),
)}


def _kept(shape: DatasetShape, prompt: int, output: int) -> bool:
    return (shape.max_prompt is None or prompt <= shape.max_prompt) and \
        (shape.max_total is None or prompt + output <= shape.max_total)


def scaled_pairs(shape: DatasetShape, pairs: list[tuple[int, int]], rounds: int = 30) -> list[tuple[int, int]]:
    """`pairs` scaled (one factor per column) so that those the filter keeps have the dataset's
    means; the filter drops long ones, so the factors are found by fixed-point iteration."""
    base_p = sum(p for p, _ in pairs) / len(pairs)
    base_o = sum(o for _, o in pairs) / len(pairs)
    fp, fo = shape.prompt_mean / base_p, shape.output_mean / base_o
    kept = pairs
    for _ in range(rounds):
        kept = [(max(1, round(p * fp)), max(1, round(o * fo))) for p, o in pairs]
        kept = [(p, o) for p, o in kept if _kept(shape, p, o)]
        if len(kept) < len(pairs) // 10:
            raise WorkloadError(f"dataset {shape.name}: the trace's lengths cannot be scaled to its means "
                                f"within its filter")
        mp, mo = sum(p for p, _ in kept) / len(kept), sum(o for _, o in kept) / len(kept)
        fp *= shape.prompt_mean / mp
        fo *= shape.output_mean / mo
    return kept


def dataset_requests(name: str, trace: str, rate: float, count: int = 2000, seed: int = 0) -> list[Request]:
    """`count` requests of dataset `name`, with `trace`'s length shape, Poisson at `rate` req/s."""
    if name not in DATASETS:
        raise WorkloadError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    pairs = scaled_pairs(DATASETS[name], [(r.prompt_len, r.output_len) for r in load_azure_trace(trace)])
    rng = random.Random(seed)
    times = gamma_arrivals(count, rate, 1.0, rng)
    return [Request(t, *rng.choice(pairs)) for t in times]
