"""Serving systems as named variants: how each schedules, and what its engine costs a step.

A GPU profile (measured operator curves, or a roofline) prices the kernels of a step. A real
engine adds its own time around them: scheduling, preparing inputs, sampling, detokenizing, in
Python, on the CPU, once per step and per sequence in it. That time is what separates the systems
the papers compared as much as their scheduling does, so each variant here names it, with the
measurement it comes from. Where a source gives a range, the variant takes the middle and
benchmarks/paper_comparison.py's sensitivity table runs the ends.

`Simulation(model, **variant.options())` runs a variant; `overheads.seconds(gpu_s, seqs)` is the
step time the simulator uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class EngineOverheads:
    """CPU time of one engine step: `per_step_s` + `per_seq_s` x the sequences in it +
    `per_context_token_s` x the tokens they attend to (block tables and the like). `hidden`:
    the engine prepares the next step while the GPU runs this one (SGLang's overlap scheduler), so
    a step takes the longer of the two instead of their sum."""

    per_step_s: float = 0.0
    per_seq_s: float = 0.0
    per_context_token_s: float = 0.0
    hidden: bool = False
    source: str = ""

    def seconds(self, gpu_s: float, seqs: int, context: int = 0) -> float:
        cpu = self.per_step_s + self.per_seq_s * seqs + self.per_context_token_s * context
        return max(gpu_s, cpu) if self.hidden else gpu_s + cpu


@dataclass(frozen=True)
class ServingSystem:
    name: str
    description: str
    system: str                        # unified | disagg | semi-pd (simulator/simulation.py)
    batching: str = "mixed"            # unified: mixed (chunked prefill) or prefill-first
    chunk_size: int | None = None      # prefill tokens per step (None: the profile's)
    max_batch: int | None = None       # running sequences per instance
    instances: tuple[int, int] = (1, 1)
    split: tuple[int, int] | None = None
    coupled: bool = True               # semi-PD: prefills launched only between decode steps
    max_decode_tokens: int | None = None  # the decode batch's context, at most (admission waits)
    overheads: EngineOverheads = field(default_factory=EngineOverheads)
    sources: tuple[str, ...] = ()

    def options(self, **overrides) -> dict:
        """Keyword arguments for simulator.simulation.Simulation (and `simulate`)."""
        options = dict(system=self.system, batching=self.batching, chunk_size=self.chunk_size,
                       max_batch=self.max_batch, instances=self.instances, split=self.split,
                       coupled=self.coupled, overheads=self.overheads, max_decode_tokens=self.max_decode_tokens)
        return {**options, **overrides}

    def with_overheads(self, **changes) -> "ServingSystem":
        return replace(self, overheads=replace(self.overheads, **changes))


# -- the measurements the constants come from --------------------------------------------------
WUKLAB = ("WukLab, 'Can scheduling overhead dominate LLM inference performance?' "
          "(mlsys.wuklab.io/posts/scheduling_overhead/, 2024): A100, Llama-3-8B, vLLM 0.5.4 spends "
          "14.3-21.8 ms of CPU scheduling per step (17.2 of a 37.4 ms step on ShareGPT); SGLang "
          "1.9-2.7 ms")
VLLM_RFC_6854 = ("vLLM RFC #6854 (multi-step scheduling, 2024): a 5-13 ms GPU bubble per decode step "
                 "between steps of Llama-3-8B on one H100")
VLLM_06_BLOG = ("vLLM v0.6.0 performance update (blog.vllm.ai/2024/09/05/perf-update.html): before "
                "v0.6, Llama-3-8B on one H100 spent 33% of a step in the API server, 29% in "
                "scheduling and 38% on the GPU; v0.6.0 moved the API server to its own process and "
                "overlaps output processing, and left scheduling serial unless multi-step is on")
VLLM_DEFAULTS = "vLLM 0.6.0 engine arguments: max_num_seqs 256; chunked prefill off by default"
SEMIPD_PAPER = ("semi-PD (arXiv 2504.19867) section 7.1: vLLM 0.6.0 as vLLM-D (default) and vLLM-S "
                "(chunked prefill, chunk 1024); DistServe 1P1D with max_batch_size 512; its Llama "
                "results run on its DistServe-based prototype, whose prefill and decode workers "
                "launch independently")
DISTSERVE_ARTIFACT = ("DistServe's artifact (LLMServe/DistServe, evaluation/2-benchmark-serving/"
                      "2-start-api-server.py): prefill --context-max-tokens-per-batch 8192, decode "
                      "--decoding-max-tokens-per-batch 65536 (the decode batch's context); its vLLM baseline "
                      "--max-num-seqs 1024 --max-num-batched-tokens 16384")
DISTSERVE_SIMULATOR = ("DistServe's simulator (LLMServe/DistServe simdistserve, add_ray_overhead): 2 ms + "
                       "0.0001 ms per context token on every step of either engine, beyond its fitted step times")
SGLANG_OVERLAP = ("SGLang v0.4 release notes (lmsys.org/blog/2024-12-04-sglang-v0-4): the zero-overhead "
                  "overlap scheduler prepares the next batch while the GPU runs the current one")

# vLLM 0.6.0: its serial scheduling, WukLab's ShareGPT figure on the papers' GPU and model
# (the version before 0.6.0, which left scheduling as it was: VLLM_06_BLOG).
VLLM_06 = EngineOverheads(per_step_s=0.0172, source=WUKLAB)
SGLANG_04 = EngineOverheads(per_step_s=0.0023, hidden=True, source=f"{WUKLAB}; {SGLANG_OVERLAP}")
# DistServe and semi-PD's prototype on it: what DistServe's own simulator adds to a step.
DISTSERVE_LOOP = EngineOverheads(per_step_s=0.002, per_context_token_s=1e-7, source=DISTSERVE_SIMULATOR)

SYSTEMS = {s.name: s for s in (
    ServingSystem("vllm-0.6-default", "vLLM 0.6.0 default (vLLM-D): prefill-first, at most 256 sequences",
                  "unified", batching="prefill-first", max_batch=256, overheads=VLLM_06,
                  sources=(VLLM_DEFAULTS, SEMIPD_PAPER)),
    ServingSystem("vllm-0.6-chunked", "vLLM 0.6.0 chunked prefill (vLLM-S): decode batched with a 1024-token "
                  "budget, at most 256 sequences", "unified", batching="mixed", chunk_size=1024, max_batch=256,
                  overheads=VLLM_06, sources=(VLLM_DEFAULTS, SEMIPD_PAPER)),
    ServingSystem("sglang-prefill-first", "SGLang 0.4: prefill-first, overlap scheduler", "unified",
                  batching="prefill-first", overheads=SGLANG_04, sources=(SGLANG_OVERLAP,)),
    ServingSystem("distserve-1p1d", "DistServe: one prefill and one decode instance, KV over NVLink, "
                  "at most 512 sequences and 65,536 context tokens in a decode batch", "disagg", instances=(1, 1),
                  chunk_size=8192, max_batch=512, max_decode_tokens=65536, overheads=DISTSERVE_LOOP,
                  sources=(DISTSERVE_ARTIFACT, SEMIPD_PAPER)),
    ServingSystem("semipd-coupled", "semi-PD as in its SGLang code: one decode loop launches prefills "
                  "between its steps", "semi-pd", split=(100, 100), coupled=True, overheads=SGLANG_04,
                  sources=(SEMIPD_PAPER, SGLANG_OVERLAP)),
    ServingSystem("semipd-async", "semi-PD's DistServe-based prototype: prefill and decode workers "
                  "launch independently over one KV pool", "semi-pd", split=(100, 100), coupled=False,
                  max_batch=512, overheads=DISTSERVE_LOOP, sources=(SEMIPD_PAPER, DISTSERVE_SIMULATOR)),
)}


def get_system(name: str) -> ServingSystem:
    if name not in SYSTEMS:
        raise ValueError(f"unknown serving system {name!r}; valid: {', '.join(SYSTEMS)}")
    return SYSTEMS[name]


def describe_systems() -> str:
    lines = ["serving systems (--serving-system):"]
    for v in SYSTEMS.values():
        o = v.overheads
        cost = f"engine time per step {o.per_step_s * 1e3:g} ms" \
            + (f" + {o.per_context_token_s * 1e6:g} us per context token" if o.per_context_token_s else "") \
            + (", overlapped with the GPU's" if o.hidden else "")
        lines.append(f"  {v.name:22} {v.description}; {cost}")
    return "\n".join(lines)
