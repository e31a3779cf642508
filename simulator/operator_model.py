"""Operator times on a GPU, from its specification sheet through curves fitted to measurements.

Each operator of a decoder layer is a GEMM (the QKV, output, MLP up and down projections) or an
elementwise kernel (norms, rotary, activation, residual add, embedding). Its time is predicted from
the work it does (FLOPs or elements, and bytes, from the layer's shape, the tokens and TP) and the
GPU's datasheet numbers, through a few constants fitted per operator:

- GEMM: t = tau + (t_c^p + t_m^p)^(1/p), t_c = FLOPs / (peak * eta_c), t_m = bytes / (bandwidth *
  eta_m): a roofline with a rounded corner (p), where 128-512 tokens reach neither bound.
- elementwise: t = tau + memory(bytes) / eta_m + k * elements / (SMs * clock): streaming plus a
  cost per element in SM cycles. Memory is served from L2 when the working set fits in it (Vidur
  repeats each kernel on the same tensors), else from HBM.

These constants carry over to another GPU of the same kind (checked on an A40 from an A100 fit).
On the GPU a profile was fitted to, a residual curve per operator and TP (the median log error
per octave of tokens) takes out what the curves miss there (kernel choices, wave quantization);
it is not carried to other GPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from simulator.hardware_profiles import Hardware
from simulator.vidur_profiles import LayerShape, OperatorTime

GEMMS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
BYTES = 2  # fp16 / bf16, as Vidur profiles


@dataclass(frozen=True)
class OperatorWork:
    compute: float  # FLOPs (GEMM) or elements (elementwise)
    bytes: float


def operator_work(op: str, shape: LayerShape, tokens: int, tp: int) -> OperatorWork:
    """The work of one operator over `tokens` tokens on one of `tp` devices."""
    n, h, d = tokens, shape.hidden, shape.head_dim
    qkv = (shape.heads + 2 * shape.kv_heads) * d
    up = (2 if shape.gated_mlp else 1) * shape.ffn
    gemm = {"attn_pre_proj": (h, qkv / tp), "attn_post_proj": (shape.heads * d / tp, h),
            "mlp_up_proj": (h, up / tp), "mlp_down_proj": (shape.ffn / tp, h)}
    if op in gemm:
        k, m = gemm[op]
        return OperatorWork(2 * n * k * m, BYTES * (k * m + n * k + n * m))
    # (elements, tensors read + written per element)
    elementwise = {
        "input_layernorm": (n * h, 2), "post_attention_layernorm": (n * h, 2), "add": (n * h, 3),
        "attn_rope": (n * (shape.heads + shape.kv_heads) * d / tp, 2),
        "mlp_act": (n * shape.ffn / tp, 3),  # reads gate and up, writes one
        "emb": (n * h, 2),  # vocabulary-parallel: every rank looks up every token (masked)
    }
    if op not in elementwise:
        raise KeyError(f"unknown operator {op!r}")
    elements, tensors = elementwise[op]
    return OperatorWork(elements, BYTES * tensors * elements)


def _memory_s(nbytes: np.ndarray, hw: Hardware, l2_bytes_per_sm_cycle: float) -> np.ndarray:
    hbm = nbytes / hw.mem_bandwidth
    if not hw.l2_bytes:
        return hbm
    l2 = nbytes / (hw.sms * hw.clock_hz * l2_bytes_per_sm_cycle)
    return np.where(nbytes <= hw.l2_bytes, l2, hbm)


def _curve(kind: str, params, compute: np.ndarray, nbytes: np.ndarray, hw: Hardware) -> np.ndarray:
    if kind == "gemm":
        tau, eta_c, eta_m, p = params
        t_c = compute / (hw.peak_flops * eta_c)
        t_m = nbytes / (hw.mem_bandwidth * eta_m)
        return tau + (t_c ** p + t_m ** p) ** (1 / p)
    tau, k, eta_m, l2_rate = params
    return tau + _memory_s(nbytes, hw, l2_rate) / eta_m + k * compute / (hw.sms * hw.clock_hz)


# Fitted unconstrained: tau, k, the L2 rate and p - 1 as logs (positive), the efficiencies through
# a logistic, between 0 and 1: no kernel beats the datasheet. On one GPU an elementwise kernel's
# streaming and per-element costs grow together, so the fit cannot tell them apart; a streaming
# kernel reaches at least half the bandwidth, so its eta_m is held in [0.5, 1] and what is slower
# than that is counted as per-element work (the embedding lookup, at 7% of the A100's bandwidth).
def _to_params(kind: str, x: np.ndarray) -> tuple:
    exp = lambda v: float(np.exp(v))  # inf rather than an exception where a trial step overshoots
    efficiency = lambda v: 1 / (1 + exp(-v))
    if kind == "gemm":
        return exp(x[0]) * 1e-6, efficiency(x[1]), efficiency(x[2]), 1 + exp(x[3])
    return exp(x[0]) * 1e-6, exp(x[1]), 0.5 + 0.5 * efficiency(x[2]), exp(x[3])


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


# Where the fit starts: (tau us, eta_c, eta_m, p - 1) and (tau us, k, eta_m, L2 B/SM/cycle).
_START = {"gemm": np.array([math.log(2.0), _logit(0.7), _logit(0.8), math.log(0.5)]),
          "elementwise": np.array([math.log(2.0), math.log(0.5), _logit(0.6), math.log(32.0)])}


def fit_least_squares(residuals, x0: np.ndarray, iterations: int = 200) -> np.ndarray:
    """Levenberg-Marquardt on a vector of residuals (numeric Jacobian): small problems only."""
    with np.errstate(all="ignore"):  # a trial step may overflow: its cost is then not finite, and refused
        return _levenberg_marquardt(residuals, np.asarray(x0, float), iterations)


def _levenberg_marquardt(residuals, x: np.ndarray, iterations: int) -> np.ndarray:
    lam = 1e-3
    r = residuals(x)
    cost = float(r @ r)
    for _ in range(iterations):
        jac = np.empty((r.size, x.size))
        for i in range(x.size):
            step = np.zeros_like(x)
            step[i] = 1e-6 * max(1.0, abs(x[i]))
            jac[:, i] = (residuals(x + step) - r) / step[i]
        normal = jac.T @ jac
        gradient = jac.T @ r
        improved = False
        while lam < 1e12:
            try:
                delta = np.linalg.solve(normal + lam * np.diag(np.diag(normal) + 1e-12), -gradient)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            candidate = residuals(x + delta)
            new_cost = float(candidate @ candidate)
            if np.isfinite(new_cost) and new_cost < cost:
                x, r, improved = x + delta, candidate, cost - new_cost > 1e-12 * cost
                cost, lam = new_cost, max(lam / 10, 1e-9)
                break
            lam *= 10
        if not improved:
            break
    return x


@dataclass(frozen=True)
class OperatorFit:
    op: str
    kind: str                # gemm | elementwise
    params: tuple            # gemm: (tau s, eta_c, eta_m, p); elementwise: (tau s, k, eta_m, L2 B/SM/cycle)
    fitted_on: str           # the hardware's name: residuals apply there only
    residuals: dict = field(default_factory=dict)  # tp -> ((log2 tokens, ...), (log residual, ...))

    def seconds(self, shape: LayerShape, tokens, tp: int, hw: Hardware) -> np.ndarray:
        tokens = np.atleast_1d(np.asarray(tokens, float))
        works = [operator_work(self.op, shape, n, tp) for n in tokens]
        t = _curve(self.kind, self.params, np.array([w.compute for w in works]),
                   np.array([w.bytes for w in works]), hw)
        curve = self.residuals.get(tp) if hw.name == self.fitted_on else None
        if curve:
            t = t / np.exp(np.interp(np.log2(np.maximum(tokens, 1)), *curve))  # log(predicted / measured)
        return t


def gemm_seconds(fit: OperatorFit, m: float, k: float, n: float, hw: Hardware) -> float:
    """Another GEMM (m x k by k x n) at a fitted GEMM's constants, without its residuals."""
    work = OperatorWork(2 * m * k * n, BYTES * (k * n + m * k + m * n))
    return float(_curve("gemm", fit.params, np.array([work.compute]), np.array([work.bytes]), hw)[0])


def residual_curve(tokens: np.ndarray, log_error: np.ndarray) -> tuple[tuple, tuple]:
    """Median log error per octave of tokens (bins centred on powers of two)."""
    octave = np.round(np.log2(np.maximum(tokens, 1)))
    centres = sorted(set(octave.tolist()))
    return tuple(centres), tuple(float(np.median(log_error[octave == c])) for c in centres)


def fit_operator(op: str, shape: LayerShape, samples: list[OperatorTime], hw: Hardware) -> OperatorFit:
    """Fit one operator's constants (and its residual curves) to its measured times on `hw`."""
    mine = [s for s in samples if s.op == op and s.seconds > 0]
    if len(mine) < 8:
        raise ValueError(f"{op}: {len(mine)} measurements, need at least 8")
    kind = "gemm" if op in GEMMS else "elementwise"
    works = [operator_work(op, shape, s.tokens, s.tp) for s in mine]
    compute = np.array([w.compute for w in works])
    nbytes = np.array([w.bytes for w in works])
    measured = np.array([s.seconds for s in mine])

    def log_error(x):
        return np.log(_curve(kind, _to_params(kind, x), compute, nbytes, hw) / measured)

    x = fit_least_squares(log_error, _START[kind])
    params = tuple(float(v) for v in _to_params(kind, x))
    error = log_error(x)
    tokens = np.array([s.tokens for s in mine], float)
    tps = np.array([s.tp for s in mine])
    residuals = {int(tp): residual_curve(tokens[tps == tp], error[tps == tp]) for tp in sorted(set(tps.tolist()))}
    return OperatorFit(op, kind, params, hw.name, residuals)


def relative_errors(fit: OperatorFit, shape: LayerShape, samples: list[OperatorTime], hw: Hardware) -> list[dict]:
    """Predicted against measured, one row per measurement of this operator."""
    rows = []
    for tp in sorted({s.tp for s in samples if s.op == fit.op}):
        mine = [s for s in samples if s.op == fit.op and s.tp == tp and s.seconds > 0]
        predicted = fit.seconds(shape, [s.tokens for s in mine], tp, hw)
        rows += [error_row(s, float(p)) for s, p in zip(mine, predicted)]
    return rows


def error_row(sample: OperatorTime, predicted_s: float) -> dict:
    return {"op": sample.op, "tokens": sample.tokens, "tp": sample.tp, "measured_ms": sample.seconds * 1e3,
            "predicted_ms": predicted_s * 1e3, "rel_error": predicted_s / sample.seconds - 1}


def error_summary(rows: list[dict]) -> dict:
    """Median and max absolute relative error, overall and per operator."""
    def summary(errors):
        errors = [abs(e) for e in errors]
        return {"median_rel_error": float(np.median(errors)), "max_rel_error": max(errors), "count": len(errors)}

    per_op = {}
    for row in rows:
        per_op.setdefault(row["op"], []).append(row["rel_error"])
    return {**summary([r["rel_error"] for r in rows]), "per_operator": {op: summary(e) for op, e in per_op.items()}}


def describe(fit: OperatorFit) -> str:
    tau, a, b, c = fit.params
    if fit.kind == "gemm":
        return f"tau {tau * 1e6:.1f} us, eta_compute {a:.3f}, eta_memory {b:.3f}, corner p {c:.2f}"
    return f"tau {tau * 1e6:.1f} us, {a:.3f} SM-cycles/element, eta_memory {b:.3f}, L2 {c:.0f} B/SM/cycle"
