"""Step-time models for the simulator: how long one engine step takes.

A step's work is a `Work` (prefill tokens and the attention they do, decode batch and the context
it reads). A model answers `step_time(work, share, other)`: seconds for that step on `share` of
the device (0..1], while the other phase runs `other = (work, share)` at the same time (semi-PD)
or nothing does (None). Two models share that interface:
- `Roofline`, for named GPUs and models (simulator/hardware_profiles.py): per kernel kind (weight
  GEMMs, attention), FLOPs at the share's compute rate against bytes (weights, KV) at a bandwidth
  that saturates at a fraction of the SMs; when both phases run and together want more compute or bandwidth than the device has,
  both slow down by the excess. With a GPU profile (`--hardware FILE.json` from `semipd
  calibrate-model --from-vidur`), the layers' linear and elementwise operators take the times of
  its fitted curves (simulator/operator_model.py) instead, and its collectives the all-reduce.
- `Fitted`, measured from a running engine by `semipd calibrate-model` (DistServe's forms:
  prefill a + b*tokens + c*pairs (+ d*cached context), decode a + b*context + c*batch; Amdahl
  scaling with the share;
  a slow-down factor while the other phase runs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from simulator.gpu_profile import GpuProfile
from simulator.hardware_profiles import HARDWARE, MODELS, Hardware, Model
from simulator.network_model import pick
from simulator.operator_model import gemm_seconds


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Work:
    prefill_tokens: int = 0     # new prompt tokens computed in this step
    prefill_pairs: float = 0.0  # attention (query, key) pairs: sum of new * (prefix + new / 2)
    prefill_context: int = 0    # cached tokens the new ones attend to (read from the KV cache)
    decode_batch: int = 0
    decode_context: int = 0     # sum of the decoding sequences' lengths
    prefill_seqs: int = 0       # sequences prefilled (each needs its last token's logits)

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.decode_batch

    @property
    def logits(self) -> int:
        """Tokens whose logits the step computes: each decoded one, each prefilled sequence's last."""
        return self.decode_batch + (self.prefill_seqs or (1 if self.prefill_tokens else 0))


def prefill_work(chunks, decode_batch: int = 0, decode_context: int = 0) -> Work:
    """Work of a step computing `chunks` = [(new tokens, tokens already cached), ...]."""
    return Work(sum(n for n, _ in chunks), sum(n * (p + n / 2) for n, p in chunks),
                sum(p for _, p in chunks), decode_batch, decode_context, len(chunks))


@dataclass(frozen=True)
class Roofline:
    hardware: Hardware
    model: Model
    tp: int = 1
    mem_fraction: float = 0.9         # of device memory for weights + KV (SGLang's mem_fraction_static)
    chunk_size: int = 8192            # prefill token budget per step
    max_batch: int = 1024             # running requests per instance
    request_overhead_s: float = 0.003  # HTTP, tokenizer, detokenizer per request
    handoff_s: float = 0.0005         # semi-PD: the decode loop taking in a finished prefill
    activation_bytes: float = 4e9     # kept free for activations and CUDA graphs
    # Pipeline parallelism (the planner's): `pp` stages of layers/pp each, every stage `tp` wide.
    # A step's latency is the whole model on `tp` devices plus (pp - 1) activation sends between
    # stages; the simulator keeps `pp` micro-batches in flight (one worker each) for throughput.
    pp: int = 1
    stage_link_bandwidth: float = 0.0  # bytes/s between stages; 0 = the hardware's NVLink
    measured: GpuProfile | None = None  # fitted operator curves for the linear layers (and collectives)
    _memo: dict = field(default_factory=dict, init=False, compare=False, repr=False)  # of _measured_layers_s

    @property
    def units(self) -> int:
        return self.hardware.units

    @property
    def devices(self) -> int:
        return self.tp * self.pp

    @property
    def kv_bytes_per_token(self) -> float:
        return self.model.kv_bytes_per_token

    @property
    def kv_capacity(self) -> int:
        """KV tokens one instance holds (over its tp devices)."""
        free = self.hardware.memory_bytes * self.mem_fraction - self.activation_bytes \
            - self.model.params * self.model.bytes_per_param / self.devices
        return max(0, int(free * self.devices / self.model.kv_bytes_per_token))

    def check_fits(self, weight_copies: int = 1) -> None:
        """ConfigError with the numbers if the weights leave no room for a KV cache."""
        weights = weight_copies * self.model.params * self.model.bytes_per_param / self.devices
        usable = self.hardware.memory_bytes * self.mem_fraction - self.activation_bytes
        if weights >= usable or self.kv_capacity < 4096:
            raise ConfigError(
                f"{self.model.name} does not fit on {self.hardware.name} at TP{self.tp}"
                f"{f' PP{self.pp}' if self.pp > 1 else ''}: "
                f"{weight_copies} cop{'y' if weight_copies == 1 else 'ies'} of the weights need "
                f"{weights / 1e9:.1f} GB per device, and {self.mem_fraction:.0%} of "
                f"{self.hardware.memory_bytes / 1e9:.0f} GB minus {self.activation_bytes / 1e9:.0f} GB for "
                f"activations leaves {usable / 1e9:.1f} GB (a KV cache of at least 4096 tokens is needed); "
                f"use a larger --tp")

    def operators(self, work: Work) -> list[tuple[float, float]]:
        """(FLOPs, bytes) per device of the step's two kinds of kernels, which run one after the
        other: the weight GEMMs over all its tokens, and attention over the KV cache."""
        m = self.model
        gemm = (m.gemm_flops(work.tokens, work.logits), m.weight_bytes_read(work.tokens))
        attention = (m.pair_flops * (work.prefill_pairs + work.decode_context),
                     m.kv_bytes_per_token * (work.tokens + work.prefill_context + work.decode_context))
        return [(f / self.tp, b / self.tp) for f, b in (gemm, attention)]

    def _isolated(self, work: Work, share: float) -> tuple[float, float, float]:
        """(seconds, share of the device's compute used, share of its bandwidth used) on `share`:
        each kernel takes the longer of its compute and its memory time (roofline)."""
        h = self.hardware
        flop_rate = h.peak_flops * h.compute_efficiency
        byte_rate = h.mem_bandwidth * h.bandwidth_efficiency
        reach = min(1.0, share / h.bandwidth_saturation)
        t = compute = memory = 0.0
        for kind, (flops, nbytes) in zip(("gemm", "attention"), self.operators(work)):
            if kind == "gemm" and self.measured is not None:
                t += self._measured_layers_s(work, share, reach)
            else:
                t += max(flops / (flop_rate * share), nbytes / (byte_rate * reach))
            compute += flops / flop_rate
            memory += nbytes / byte_rate
        t = max(t, 1e-9)
        return t, compute / t, memory / t

    def _measured_layers_s(self, work: Work, share: float, reach: float) -> float:
        """The fitted curves' time for every layer's linear and elementwise operators, the
        embedding and the LM head, on `share` of the SMs reaching `reach` of the bandwidth."""
        tokens, logits = max(work.tokens, 1), work.logits
        key = (tokens, logits, share, reach)
        if key not in self._memo:  # a simulation asks for the same few thousand steps again and again
            h, profile = self.hardware, self.measured
            part = replace(h, peak_flops=h.peak_flops * share, mem_bandwidth=h.mem_bandwidth * reach,
                           sms=h.sms * share)
            seconds = {fit.op: float(fit.seconds(profile.shape, tokens, self.tp, part)[0]) for fit in profile.operators}
            # The LM head (not in Vidur's layer profile): hidden x vocab / tp for each token whose
            # logits are needed, at the fitted constants of the MLP's up projection.
            head = gemm_seconds(profile.operator("mlp_up_proj"), logits, profile.shape.hidden,
                                profile.shape.vocab / self.tp, part)
            emb = seconds.pop("emb", 0.0)
            self._memo[key] = self.model.layers * sum(seconds.values()) + emb + head
        return self._memo[key]

    def allreduce_s(self, tokens: int) -> float:
        if self.tp == 1:
            return 0.0
        h, m = self.hardware, self.model
        message = tokens * m.hidden * m.bytes_per_param
        if self.measured is not None and self.measured.collectives:
            fit = pick(list(self.measured.collectives), "all_reduce", self.tp, self._devices_per_node())
            return 2 * m.layers * fit.seconds(message)
        return 2 * m.layers * (h.link_latency_s + 2 * (self.tp - 1) / self.tp * message / h.link_bandwidth)

    def _devices_per_node(self) -> int:
        return 8 if self.hardware.topology == "nvswitch" else 2 if self.hardware.topology == "pairwise-nvlink" else 1

    def stage_sends_s(self, tokens: int) -> float:
        """Pipeline parallelism: the step's activations (tokens x hidden) sent between stages."""
        if self.pp == 1:
            return 0.0
        h, m = self.hardware, self.model
        message = tokens * m.hidden * m.bytes_per_param
        return (self.pp - 1) * (h.link_latency_s + message / (self.stage_link_bandwidth or h.link_bandwidth))

    def step_time(self, work: Work, share: float, other: tuple[Work, float] | None = None) -> float:
        t, compute, memory = self._isolated(work, share)
        if other is not None:
            # Both phases run: each is capped at its share of the SMs, and where together they
            # want more than the device's compute or bandwidth, both slow down by the excess
            # (processor sharing). A memory-bound decode uses little compute, so 100/100 leaves
            # prefill nearly the whole device, as on GPUs under MPS.
            _, o_compute, o_memory = self._isolated(*other)
            t *= max(1.0, compute + o_compute, memory + o_memory)
        return t + self.hardware.step_overhead_s + self.allreduce_s(work.tokens) + self.stage_sends_s(work.tokens)

    def kv_transfer_s(self, tokens: int, bandwidth: float | None = None) -> float:
        return self.hardware.link_latency_s + tokens * self.kv_bytes_per_token / (bandwidth or self.hardware.link_bandwidth)


def by_share(table, features, share: float) -> float:
    """Seconds from per-share linear fits [(share, coefficients), ...] (ascending shares): linear
    in 1/share between measured shares, proportional to 1/share below the smallest, flat above
    the largest; a larger share is never slower (each time is capped by the smaller share's)."""
    points, cap = [], float("inf")
    for s, coef in table:
        cap = min(cap, sum(c * f for c, f in zip(coef, features)))
        points.append((s, cap))
    if share <= points[0][0]:
        return points[0][1] * points[0][0] / share
    for (s_lo, t_lo), (s_hi, t_hi) in zip(points, points[1:]):
        if share <= s_hi:
            w = (1 / share - 1 / s_hi) / (1 / s_lo - 1 / s_hi)
            return t_hi + w * (t_lo - t_hi)
    return points[-1][1]


@dataclass(frozen=True)
class Fitted:
    units: int                         # cores (CPU) or percent
    kv_capacity: int
    chunk_size: int
    max_batch: int
    # per measured share (fraction of the device), linear fits in seconds:
    prefill: tuple  # ((share, (a, b, c, d)), ...): a + b * tokens + c * pairs + d * cached context
    decode: tuple   # ((share, (a, b, c)), ...):    a + b * context + c * batch
    contention: tuple[float, float] = (0.0, 0.0)      # slow-down while the other phase runs (prefill, decode)
    oversubscribed: tuple[float, float] = (0.0, 0.0)  # the same when the two shares overlap
    request_overhead_s: float = 0.0    # added to every TTFT (HTTP, tokenizer, hand-off)
    decode_gap_s: float = 0.0          # scheduling between decode steps
    handoff_s: float = 0.0             # semi-PD: the decode loop taking in a finished prefill
    kv_bytes_per_token: float = 0.0
    devices: int = 1
    source: str = ""
    fit_error: dict = field(default_factory=dict)
    # decode batches of at least `large_batch` requests use these instead (DistServe fits two sets)
    decode_large: tuple = ()  # ((share, (a, b, c)), ...)
    large_batch: int = 0

    def check_fits(self, weight_copies: int = 1) -> None:
        if self.kv_capacity < 1:
            raise ConfigError(f"the calibrated profile has no KV capacity ({self.kv_capacity} tokens)")

    def step_time(self, work: Work, share: float, other: tuple[Work, float] | None = None) -> float:
        slow = (1.0, 1.0)
        if other is not None:
            extra = self.oversubscribed if share + other[1] > 1.0 + 1e-9 else self.contention
            slow = (1 + extra[0], 1 + extra[1])
        t = 0.0
        if work.prefill_tokens:
            t += slow[0] * by_share(self.prefill, (1.0, work.prefill_tokens, work.prefill_pairs,
                                                   work.prefill_context), share)
        if work.decode_batch:
            decode = self.decode_large if self.decode_large and work.decode_batch >= self.large_batch else self.decode
            t += slow[1] * by_share(decode, (1.0, work.decode_context, work.decode_batch), share)
            t += self.decode_gap_s
        if work.prefill_tokens and work.decode_batch:  # one step, one fixed cost
            t -= min(by_share(self.prefill, (1, 0, 0, 0), share), by_share(self.decode, (1, 0, 0), share))
        return t

    def kv_transfer_s(self, tokens: int, bandwidth: float | None = None) -> float:
        if not bandwidth:
            raise ConfigError("a calibrated profile has no link: give --link-gbps")
        return tokens * self.kv_bytes_per_token / bandwidth

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"kind": "fitted", **asdict(self)}, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Fitted":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the calibrated profile {path}: {exc}") from None
        if data.pop("kind", None) != "fitted":
            raise ConfigError(f"{path} is not a profile written by `semipd calibrate-model`")
        for key in ("prefill", "decode", "decode_large"):
            data[key] = tuple((share, tuple(coef)) for share, coef in data.get(key, ()))
        for key in ("contention", "oversubscribed"):
            data[key] = tuple(data[key])
        return cls(**data)


def build_model(hardware: str, model: str | None = None, tp: int | None = None, **options):
    """A step-time model from names (Roofline), from a GPU profile file (Roofline with its fitted
    operator curves) or from an engine's calibrated profile file (Fitted); ConfigError lists the
    valid names."""
    if hardware.endswith(".json"):
        if profile_kind(hardware) == "gpu":
            return gpu_profile_model(hardware, model, tp, **options)
        return Fitted.load(hardware)
    if hardware not in HARDWARE:
        raise ConfigError(f"unknown hardware {hardware!r}; valid: {', '.join(HARDWARE)}, "
                          f"or a profile .json written by `semipd calibrate-model`")
    return Roofline(HARDWARE[hardware], *model_and_tp(model, tp), **options)


def model_and_tp(model: str | None, tp: int | None) -> tuple[Model, int]:
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
    m = MODELS[model]
    tp = tp or m.default_tp
    if tp < 1 or m.heads % tp or (m.kv_heads % tp and tp % m.kv_heads):
        raise ConfigError(f"--tp {tp} does not divide {model}'s {m.heads} attention heads "
                          f"({m.kv_heads} KV heads)")
    return m, tp


def profile_kind(path: str) -> str | None:
    try:
        return json.loads(Path(path).read_text()).get("kind")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the profile {path}: {exc}") from None


def gpu_profile_model(path: str, model: str | None, tp: int | None, **options) -> Roofline:
    try:
        profile = GpuProfile.load(path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if model and model != profile.model:
        raise ConfigError(f"{path} is fitted to {profile.model}, not {model}: drop --model or fit a profile for it")
    return Roofline(profile.hardware, *model_and_tp(profile.model, tp), measured=profile, **options)


def fitted_model(compute_dir, model: str, gpu: str, tp: int | None = None, **options) -> Roofline:
    """`model` on `gpu` with operator curves fitted now to the Vidur measurements in `compute_dir`
    (what `semipd calibrate-model --from-vidur` saves; a fit takes well under a second)."""
    from simulator.gpu_profile import calibrate_from_vidur, hardware_named

    profile = calibrate_from_vidur(compute_dir, model, hardware_named(gpu))
    return Roofline(profile.hardware, *model_and_tp(model, tp), measured=profile, **options)


def describe_profiles() -> str:
    lines = ["hardware (units: percent of the SMs):"]
    for h in HARDWARE.values():
        lines.append(f"  {h.name:18} {h.peak_flops / 1e12:5.0f} TFLOP/s  {h.mem_bandwidth / 1e12:4.2f} TB/s  "
                     f"{h.memory_bytes / 1e9:4.0f} GB  {h.sms} SMs\n      source: {h.source}")
    lines.append("models:")
    for m in MODELS.values():
        lines.append(f"  {m.name:18} {m.params / 1e9:5.1f} B params  KV {m.kv_bytes_per_token / 1024:5.0f} KiB/token  "
                     f"default TP{m.default_tp}\n      source: {m.source}")
    lines.append("or --hardware FILE.json: a CPU engine measured by `semipd calibrate-model` (no --model)")
    return "\n".join(lines)
