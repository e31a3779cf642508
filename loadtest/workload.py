"""Workloads: what to send and when. A request is an arrival time and two lengths.

Every command that takes `--workload` takes one SPEC string (see SPEC_HELP). Prompts are made of
exactly `prompt_len` token ids and outputs are forced to `output_len` tokens (ignore_eos), so a
workload replays the same work on any server. Requests of a shared-prefix group start with the
same `prefix_len` tokens, which a radix cache can reuse.
"""

from __future__ import annotations

import csv
import math
import random
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

TRACE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")

SPEC_HELP = """\
Workload SPEC (one string; lengths in tokens, times in seconds):
  trace:PATH[,start=S][,duration=D][,rate_scale=R][,len_scale=L][,max_prompt=P][,max_output=O]
      replay an Azure LLM trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens): the rows from S
      seconds after its first row, for D seconds; arrivals R times faster; lengths times L, clipped.
  poisson:rate=R,prompt=DIST,output=DIST[,count=N][,seed=K]
  gamma:rate=R,cv=C,prompt=DIST,output=DIST[,count=N][,seed=K]
      synthetic arrivals (Gamma with coefficient of variation C; cv=1 is Poisson), N requests
      (default 200).
  shared-prefix:groups=G,per_group=N,prefix=P,question=Q,output=O,rate=R[,seed=K]
      G groups of N requests; the requests of a group share a P-token system prompt and each adds
      its own Q-token question; Poisson arrivals, groups interleaved.
  dataset:NAME,trace=PATH,rate=R[,count=N][,seed=K]
      a paper's dataset by its published mean lengths (sharegpt-distserve, sharegpt-vllm,
      humaneval, longbench): PATH's (prompt, output) pairs scaled to those means after the
      dataset's filter, Poisson arrivals (loadtest/paper_datasets.py says where each comes from).
  concat:SPEC1;SPEC2;...
      the parts one after another (each starts after the previous part's last arrival): a mix
      that changes over time.
  DIST is a number, uniform(a,b), lognormal(mean,sigma) (of the length, not of its log), or
  trace(PATH[,scale]): lengths drawn from those of a trace (its prompt or output column), scaled.
Examples:
  trace:../shared/data/azure_llm_2023_conv.csv,duration=120,len_scale=0.25,max_prompt=1024
  poisson:rate=2,prompt=uniform(64,512),output=lognormal(128,0.8),count=300
  shared-prefix:groups=4,per_group=16,prefix=512,question=32,output=64,rate=4"""


class WorkloadError(ValueError):
    pass


@dataclass(frozen=True)
class Request:
    arrival_s: float
    prompt_len: int
    output_len: int
    prefix_group: int | None = None  # requests of one group share their first prefix_len tokens
    prefix_len: int = 0


# -- length distributions -------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    kind: str  # "fixed" | "uniform" | "lognormal" | "trace"
    a: float
    b: float = 0.0
    values: tuple[int, ...] = ()  # "trace": the observed lengths, already scaled

    def sample(self, rng: random.Random) -> int:
        if self.kind == "trace":
            return rng.choice(self.values)
        if self.kind == "fixed":
            value = self.a
        elif self.kind == "uniform":
            value = rng.uniform(self.a, self.b)
        else:  # lognormal with the given mean of the length and sigma of its log
            value = rng.lognormvariate(math.log(self.a) - self.b ** 2 / 2, self.b)
        return max(1, round(value))


def trace_dist(text: str, what: str) -> Dist:
    """trace(PATH[,scale]): the empirical distribution of a trace's prompt or output lengths."""
    path, _, scale = text[len("trace("):-1].partition(",")
    try:
        scale = float(scale) if scale.strip() else 1.0
    except ValueError:
        raise WorkloadError(f"{what}={text!r}: the scale must be a number") from None
    requests = load_azure_trace(path.strip(), len_scale=scale)
    return Dist("trace", 0, 0, tuple(r.prompt_len if what == "prompt" else r.output_len for r in requests))


def parse_dist(text: str, what: str) -> Dist:
    text = text.strip()
    if text.startswith("trace(") and text.endswith(")"):
        return trace_dist(text, what)
    match = re.fullmatch(r"(uniform|lognormal)\(\s*([^,]+),\s*([^)]+)\)", text)
    try:
        if match:
            kind, a, b = match.group(1), float(match.group(2)), float(match.group(3))
        else:
            kind, a, b = "fixed", float(text), 0.0
    except ValueError:
        raise WorkloadError(f"{what}={text!r} is not a length distribution: use a number, "
                            "uniform(a,b), lognormal(mean,sigma) or trace(PATH,scale)") from None
    if kind == "fixed" and a < 1 or kind == "uniform" and not 1 <= a <= b or kind == "lognormal" and (a < 1 or b < 0):
        raise WorkloadError(f"{what}={text!r} is out of range: lengths are at least 1 token "
                            "(uniform(a,b) needs 1 <= a <= b; lognormal(mean,sigma) needs mean >= 1, sigma >= 0)")
    return Dist(kind, a, b)


# -- arrivals -------------------------------------------------------------------------------------
def gamma_arrivals(count: int, rate: float, cv: float, rng: random.Random) -> list[float]:
    """Arrival times with mean rate `rate` and inter-arrival coefficient of variation `cv`."""
    shape = 1.0 / cv ** 2
    t, times = 0.0, []
    for _ in range(count):
        times.append(t)
        t += rng.gammavariate(shape, 1.0 / (shape * rate))
    return times


def with_poisson_arrivals(requests: list[Request], rate: float, seed: int = 0) -> list[Request]:
    """The same requests, re-timed as a Poisson process of `rate` requests per second."""
    if rate <= 0:
        raise WorkloadError(f"rate must be positive, got {rate}")
    times = gamma_arrivals(len(requests), rate, 1.0, random.Random(seed))
    return [Request(t, r.prompt_len, r.output_len, r.prefix_group, r.prefix_len) for t, r in zip(times, requests)]


def scale_rate(requests: list[Request], factor: float) -> list[Request]:
    """Arrivals `factor` times faster (lengths unchanged)."""
    return [Request(r.arrival_s / factor, r.prompt_len, r.output_len, r.prefix_group, r.prefix_len)
            for r in requests]


def mean_rate(requests: list[Request]) -> float:
    span = requests[-1].arrival_s - requests[0].arrival_s if len(requests) > 1 else 0.0
    return (len(requests) - 1) / span if span > 0 else float("inf")


# -- the Azure trace ------------------------------------------------------------------------------
def _timestamp(text: str) -> float:
    # The Azure trace has 7 fractional digits; datetime takes at most 6.
    head, _, frac = text.strip().partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}" if frac else head).timestamp()


def load_azure_trace(path: str | Path, start: float = 0.0, duration: float | None = None,
                     rate_scale: float = 1.0, len_scale: float = 1.0, max_prompt: int | None = None,
                     max_output: int | None = None) -> list[Request]:
    """Requests of an Azure LLM trace CSV arriving in [start, start + duration) seconds after its
    first row, re-based to 0, `rate_scale` times faster, lengths times `len_scale`, clipped."""
    for name, value in (("rate_scale", rate_scale), ("len_scale", len_scale)):
        if value <= 0:
            raise WorkloadError(f"{name} must be positive, got {value}")
    try:
        f = open(path, newline="")
    except OSError as exc:
        raise WorkloadError(f"cannot read trace {path}: {exc.strerror}") from None
    requests, t_first = [], None
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in TRACE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise WorkloadError(f"{path}: missing column(s) {', '.join(missing)}; a trace needs "
                                f"{', '.join(TRACE_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            try:
                t, prompt, output = _timestamp(row["TIMESTAMP"]), int(row["ContextTokens"]), int(row["GeneratedTokens"])
            except (ValueError, TypeError) as exc:
                raise WorkloadError(f"{path}, line {line}: {exc}") from None
            if prompt < 0 or output < 0:
                raise WorkloadError(f"{path}, line {line}: negative length (ContextTokens {prompt}, "
                                    f"GeneratedTokens {output})")
            t_first = t if t_first is None else t_first
            offset = t - t_first
            if offset < start:
                continue
            if duration is not None and offset >= start + duration:
                break
            prompt, output = max(1, round(prompt * len_scale)), max(1, round(output * len_scale))
            requests.append(Request((offset - start) / rate_scale, min(prompt, max_prompt or prompt),
                                    min(output, max_output or output)))
    if not requests:
        raise WorkloadError(f"{path}: no requests between {start} s and "
                            f"{'the end' if duration is None else f'{start + duration} s'}")
    return requests


# -- SPEC strings ---------------------------------------------------------------------------------
def _fields(body: str) -> dict[str, str]:
    """'a=1,b=uniform(2,3)' -> {'a': '1', 'b': 'uniform(2,3)'} (commas inside parentheses kept)."""
    fields, depth, current = {}, 0, ""
    for ch in body + ",":
        if ch == "," and depth == 0:
            if current.strip():
                key, sep, value = current.partition("=")
                if not sep:
                    raise WorkloadError(f"{current.strip()!r} is not KEY=VALUE")
                fields[key.strip()] = value.strip()
            current = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        current += ch
    return fields


def _number(fields: dict, key: str, kind=float, default=None, low=None):
    if key not in fields:
        if default is None:
            raise WorkloadError(f"missing {key}=")
        return default
    try:
        value = kind(fields.pop(key))
    except ValueError:
        raise WorkloadError(f"{key} must be a {'whole ' if kind is int else ''}number") from None
    if low is not None and value < low:
        raise WorkloadError(f"{key}={value} is out of range: it must be at least {low}")
    return value


def parse_workload(spec: str) -> list[Request]:
    """Build the requests a SPEC names (see SPEC_HELP); a WorkloadError says what is wrong."""
    kind, _, body = spec.partition(":")
    if kind == "concat":
        return concat_workload(body)
    try:
        if kind == "trace":
            path, _, rest = body.partition(",")
            f = _fields(rest)
            requests = load_azure_trace(
                path, start=_number(f, "start", default=0.0, low=0), duration=_number(f, "duration", default=math.inf, low=0),
                rate_scale=_number(f, "rate_scale", default=1.0), len_scale=_number(f, "len_scale", default=1.0),
                max_prompt=_number(f, "max_prompt", int, default=0, low=0) or None,
                max_output=_number(f, "max_output", int, default=0, low=0) or None)
        elif kind in ("poisson", "gamma"):
            f = _fields(body)
            rate = _number(f, "rate", low=1e-9)
            cv = _number(f, "cv", low=0.01) if kind == "gamma" else 1.0
            count = _number(f, "count", int, default=200, low=1)
            rng = random.Random(_number(f, "seed", int, default=0))
            prompt = parse_dist(f.pop("prompt", "") or _missing("prompt"), "prompt")
            output = parse_dist(f.pop("output", "") or _missing("output"), "output")
            times = gamma_arrivals(count, rate, cv, rng)
            requests = [Request(t, prompt.sample(rng), output.sample(rng)) for t in times]
        elif kind == "dataset":
            from loadtest.paper_datasets import dataset_requests  # (it builds on this module)

            name, _, rest = body.partition(",")
            f = _fields(rest)
            requests = dataset_requests(name.strip(), f.pop("trace", "") or _missing("trace"),
                                        _number(f, "rate", low=1e-9), _number(f, "count", int, default=2000, low=1),
                                        _number(f, "seed", int, default=0))
        elif kind == "shared-prefix":
            f = _fields(body)
            groups, per_group = _number(f, "groups", int, low=1), _number(f, "per_group", int, low=1)
            prefix, question = _number(f, "prefix", int, low=1), _number(f, "question", int, low=1)
            output, rate = _number(f, "output", int, low=1), _number(f, "rate", low=1e-9)
            rng = random.Random(_number(f, "seed", int, default=0))
            order = [g for g in range(groups) for _ in range(per_group)]
            rng.shuffle(order)
            times = gamma_arrivals(len(order), rate, 1.0, rng)
            requests = [Request(t, prefix + question, output, g, prefix) for t, g in zip(times, order)]
        else:
            raise WorkloadError(f"unknown workload kind {kind!r}: use trace, poisson, gamma, dataset, shared-prefix or concat")
    except WorkloadError as exc:
        raise WorkloadError(f"workload {spec!r}: {exc}") from None
    if f:
        raise WorkloadError(f"workload {spec!r}: unknown field(s) {', '.join(sorted(f))}")
    return requests


def concat_workload(body: str) -> list[Request]:
    """concat:SPEC1;SPEC2;...: each part after the previous one's last arrival (a mix that changes)."""
    requests, start = [], 0.0
    for part in body.split(";"):
        if not part.strip():
            raise WorkloadError(f"workload 'concat:{body}': an empty part")
        requests += [Request(r.arrival_s + start, r.prompt_len, r.output_len, r.prefix_group, r.prefix_len)
                     for r in parse_workload(part.strip())]
        start = requests[-1].arrival_s
    return requests


def _missing(key: str):
    raise WorkloadError(f"missing {key}=")


def prompt_tokens(request_index: int, request: Request, vocab: int, seed: int = 0) -> list[int]:
    """The prompt of a request: `prompt_len` ordinary token ids (ids below 10 are kept for
    special tokens), the first `prefix_len` of them common to the request's prefix group."""
    ids = []
    if request.prefix_group is not None:
        prefix_rng = random.Random(f"prefix:{seed}:{request.prefix_group}")
        ids = [prefix_rng.randrange(10, vocab) for _ in range(request.prefix_len)]
    rng = random.Random(f"prompt:{seed}:{request_index}")
    ids += [rng.randrange(10, vocab) for _ in range(request.prompt_len - len(ids))]
    return ids
