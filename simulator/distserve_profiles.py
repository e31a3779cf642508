"""DistServe's fitted A100-80GB latency models as step-time models: the colocated vLLM baseline's
and DistServe's own, per model and TP degree.

Source: LLMServe/DistServe, `simdistserve/estimators/profile_data/` (Apache-2.0; Zhong et al.,
OSDI 2024), fitted there by least squares on relative error to single forward passes measured on
A100-80GB. In milliseconds: prefill `a + b * sum(l) + c * sum(l^2)`; decode `a + b * sum(context) +
c * batch`, with one set below `decoding_large_small_bs_threshold` requests and another at or
above it. The constant `a` is the engine's fixed cost per step (launches, Python, scheduling),
which a roofline lacks. `max_num_tokens.csv` gives each configuration's KV capacity in tokens.

Our prefill term counts attention pairs, sum(new * (cached + new / 2)), which for a prompt with
nothing cached is l^2 / 2: so c becomes 2c.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from simulator.perf_model import ConfigError, Fitted

SYSTEMS = ("vllm", "distserve")
HF_NAMES = {"opt-13b": "facebook/opt-13b", "opt-66b": "facebook/opt-66b", "opt-175b": "facebook/opt-175b"}


def distserve_model(directory: str | Path, system: str, model: str, tp: int, chunk_size: int = 0,
                    max_batch: int = 512) -> Fitted:
    """The step-time model of `system` (vllm | distserve) for `model` at TP `tp`, from DIR holding
    profiler-a100-80g.{system}.json and max_num_tokens.csv. ConfigError names what is missing."""
    if system not in SYSTEMS:
        raise ConfigError(f"unknown system {system!r}; DistServe fits: {', '.join(SYSTEMS)}")
    if model not in HF_NAMES:
        raise ConfigError(f"DistServe fits no {model!r}; valid: {', '.join(HF_NAMES)}")
    directory = Path(directory)
    path = directory / f"profiler-a100-80g.{system}.json"
    try:
        fits = json.loads(path.read_text())[HF_NAMES[model]]
        limits = {(row["model"], int(row["tp"]), int(row["pp"])): int(row["max_num_tokens"])
                  for row in csv.DictReader((directory / "max_num_tokens.csv").open())}
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read DistServe's profile for {model} in {directory}: {exc}") from None
    if str(tp) not in fits:
        raise ConfigError(f"{path.name} has {model} at TP {', '.join(sorted(fits))}, not {tp}")
    fit = fits[str(tp)]
    kv = limits.get((HF_NAMES[model], tp, 1))
    if kv is None:
        raise ConfigError(f"max_num_tokens.csv has no {model} at TP {tp}")
    ms = 1e-3
    a, b, c = fit["prefill"]
    small, large = fit["decoding_smallbs"], fit["decoding_largebs"]
    return Fitted(units=100, kv_capacity=kv, chunk_size=chunk_size or kv, max_batch=max_batch,
                  prefill=((1.0, (a * ms, b * ms, 2 * c * ms, 0.0)),),
                  decode=((1.0, tuple(v * ms for v in small)),),
                  decode_large=((1.0, tuple(v * ms for v in large)),),
                  large_batch=int(fit["decoding_large_small_bs_threshold"]), devices=tp,
                  source=f"DistServe's fitted A100-80GB latency model for {system}, {model} TP{tp} "
                         f"({path.name}; LLMServe/DistServe simdistserve/estimators/profile_data, Apache-2.0)")
