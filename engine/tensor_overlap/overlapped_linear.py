"""Row-parallel linear whose all-reduce overlaps its GEMM, one group of output rows at a time.

Each rank holds X[:, its K slice] and W[:, its K slice]; the layer output is the sum over ranks of
X_r @ W_r^T. The plain way computes the whole product, then all-reduces it. Here the output rows
are computed group by group (wave_schedule); as soon as a group's GEMM returns, its rows - a
contiguous slice of the output - go to the ordinary collective of torch.distributed with
async_op=True, and the next group's GEMM runs while that collective is in flight.

Order: a group is a block of whole output rows (tokens), so every chunk lands where it belongs
and nothing needs reordering. FlashOverlap instead lets one GPU kernel write tiles in completion
order into a permuted buffer and un-permutes in the next RMSNorm; with one GEMM call per group we
trade some GEMM efficiency (thinner calls) for needing neither the permutation nor signal kernels.
On a GPU (NCCL) the same code is correct: each async all_reduce is queued on NCCL's stream behind
the GEMM that produced its rows, the next GEMM is queued on the compute stream, and work.wait()
makes the compute stream wait. That path has not been run on GPUs here.

Row-wise epilogues (residual add + RMSNorm are per token) can run per group as its collective
completes, while later groups are still on the wire: `epilogue(out, start, stop)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from engine.tensor_overlap.wave_schedule import (
    CostModel, ScheduleCache, ShapeKey, WavePlan, choose_by_model, device_tag, even_groups,
    validate_groups, wave_count, wave_rows_for,
)

Epilogue = Callable[[torch.Tensor, int, int], None]  # (summed output, start row, stop row)


def _check_operands(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"x and weight must be 2-D; got x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[1]} columns but weight has {weight.shape[1]}; they must match (K)")


def _check_ranges(ranges: Sequence[tuple[int, int]], m: int) -> None:
    expected = 0
    for start, stop in ranges:
        if start != expected or not start < stop <= m:
            raise ValueError(f"row range ({start}, {stop}) is invalid; valid: consecutive, non-empty "
                             f"ranges covering 0..{m} in order")
        expected = stop
    if expected != m:
        raise ValueError(f"row ranges cover 0..{expected}; valid: they must cover all {m} rows")


def gemm_then_all_reduce(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                         group=None) -> torch.Tensor:
    """The baseline: the whole GEMM, then one all-reduce."""
    out = torch.nn.functional.linear(x, weight, bias)
    dist.all_reduce(out, group=group)
    return out


def overlapped_gemm_all_reduce(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               ranges: Sequence[tuple[int, int]], group=None,
                               epilogue: Epilogue | None = None) -> torch.Tensor:
    """sum over ranks of x @ weight.T (+ bias), computed and all-reduced one row range at a time.

    bias must be given on one rank only (it would be summed world-size times otherwise)."""
    _check_operands(x, weight)
    m = x.shape[0]
    _check_ranges(ranges, m)
    out = torch.empty((m, weight.shape[0]), dtype=torch.result_type(x, weight), device=x.device)
    weight_t = weight.t()
    pending = []
    for start, stop in ranges:
        chunk = out[start:stop]  # a contiguous view: row blocks of a row-major tensor
        if bias is None:
            torch.mm(x[start:stop], weight_t, out=chunk)
        else:
            torch.addmm(bias, x[start:stop], weight_t, out=chunk)
        pending.append(dist.all_reduce(chunk, group=group, async_op=True))
    for (start, stop), work in zip(ranges, pending):
        work.wait()
        if epilogue is not None:
            epilogue(out, start, stop)
    return out


def _reduce_scatter(output: torch.Tensor, input_: torch.Tensor, group):
    op = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor  # renamed in torch 2.1x
    return op(output, input_, group=group, async_op=True)


def gemm_then_reduce_scatter(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                             group=None) -> torch.Tensor:
    """The baseline: the whole GEMM, then one reduce-scatter; rank r keeps rows r*M/W..(r+1)*M/W."""
    full = torch.nn.functional.linear(x, weight, bias)
    out = torch.empty((x.shape[0] // dist.get_world_size(group), weight.shape[0]), dtype=full.dtype,
                      device=full.device)
    _reduce_scatter(out, full, group).wait()
    return out


def overlapped_gemm_reduce_scatter(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                   local_ranges: Sequence[tuple[int, int]], group=None) -> torch.Tensor:
    """Rank r's block (rows r*M/W..(r+1)*M/W) of sum over ranks of x @ weight.T, by groups.

    local_ranges cut the M/W rows of one rank's block. Group [s, e) computes rows s..e of EVERY
    rank's block, gathered into one contiguous buffer in rank order, so that a plain
    reduce-scatter of that buffer lands each rank's rows in place in its own output: the order is
    restored on the input side (a row gather of x), and the output needs no reordering."""
    _check_operands(x, weight)
    world = dist.get_world_size(group)
    if x.shape[0] % world:
        raise ValueError(f"M={x.shape[0]} rows is not divisible by the world size {world}; "
                         f"reduce-scatter needs M a multiple of {world} (pad the batch)")
    block = x.shape[0] // world
    _check_ranges(local_ranges, block)
    out = torch.empty((block, weight.shape[0]), dtype=torch.result_type(x, weight), device=x.device)
    weight_t = weight.t()
    pending = []
    for start, stop in local_ranges:
        rows = torch.cat([x[r * block + start:r * block + stop] for r in range(world)])
        chunk = torch.mm(rows, weight_t) if bias is None else torch.addmm(bias, rows, weight_t)
        pending.append((chunk, _reduce_scatter(out[start:stop], chunk, group)))
    for chunk, work in pending:  # chunk stays referenced until its collective is done
        work.wait()
    return out


def add_rmsnorm_epilogue(residual: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                         normed: torch.Tensor) -> Epilogue:
    """residual[rows] += out[rows]; normed[rows] = RMSNorm(residual[rows]): the decoder's next step,
    applied per group as soon as that group's sum is complete."""
    def apply(out: torch.Tensor, start: int, stop: int) -> None:
        r = residual[start:stop]
        r.add_(out[start:stop])
        variance = r.pow(2).mean(-1, keepdim=True)
        torch.mul(r * torch.rsqrt(variance + eps), norm_weight, out=normed[start:stop])
    return apply


# Rows per wave are at least this many: thinner GEMM calls lose more efficiency than they gain.
MIN_WAVE_ROWS = 16
DEFAULT_MAX_WAVES = 8

# From `semipd bench-overlap --calibrate` on this project's 2-core CPU (AVX-512, float32, gloo over
# loopback, world size 2, 1 thread per rank): ~8e10 flop/s, 0.4-0.7 ms and ~1.0-1.3 GB/s per
# all-reduce. A lone all-reduce beside a lone GEMM hid 35-70% of the shorter one, but in the chunked
# pipeline the benchmark measured no gain at all: gloo's send/receive/sum is CPU work that needs the
# core the GEMM is on. contention=0.9 makes the tuner answer "one group" here (docs/tensor-overlap.md).
# Shared by every rank, so every rank picks the same groups. Override: SEMIPD_TP_OVERLAP_MODEL.
CPU_GLOO_MODEL = CostModel(gemm_flops_per_s=8e10, comm_latency_s=5e-4, comm_bytes_per_s=1.2e9,
                           launch_s=1e-4, contention=0.9)
# Placeholder for GPUs (A100-class GEMM, PCIe-class NCCL); not measured here.
CUDA_NCCL_MODEL = CostModel(gemm_flops_per_s=2e14, comm_latency_s=1.5e-5, comm_bytes_per_s=1.5e10,
                            launch_s=5e-6, contention=0.0)


def default_cost_model(device_type: str) -> CostModel:
    return CUDA_NCCL_MODEL if device_type == "cuda" else CPU_GLOO_MODEL


@dataclass
class GroupPolicy:
    """How a layer picks its groups for an m x n x k GEMM.

    mode 'auto': the cost model over every composition of up to max_waves waves, cached per shape;
    mode 'fixed': `count` groups as equal as possible (wave = one row, so any m works), for tests
    and experiments; m smaller than count gives one group per row."""

    mode: str = "auto"
    count: int = 1
    max_waves: int = DEFAULT_MAX_WAVES
    min_wave_rows: int = MIN_WAVE_ROWS
    model: CostModel | None = None
    cache: ScheduleCache = field(default_factory=ScheduleCache)

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "fixed"):
            raise ValueError(f"mode={self.mode!r} is invalid; valid: 'auto', 'fixed'")
        if self.mode == "fixed" and self.count < 1:
            raise ValueError(f"group count {self.count} is invalid; valid: an integer >= 1")
        wave_rows_for(1, self.max_waves)  # range check of max_waves

    def plan(self, m: int, n: int, k: int, device: str, elem_bytes: int = 4) -> WavePlan:
        if self.mode == "fixed":
            count = min(self.count, m)
            return WavePlan(m, 1, even_groups(m, count))
        key = ShapeKey(m, n, k, device)

        def choose(key: ShapeKey) -> WavePlan:
            wave_rows = wave_rows_for(m, self.max_waves, self.min_wave_rows)
            model = self.model or default_cost_model(device.split("-")[0])
            groups, _ = choose_by_model(model, m, n, k, wave_rows, elem_bytes)
            return WavePlan(m, wave_rows, groups)

        return self.cache.get_or_choose(key, choose)


def plan_from_groups(m: int, wave_rows: int, groups: Sequence[int]) -> WavePlan:
    """A WavePlan from explicit group sizes, or ValueError naming the bad size and valid range."""
    return WavePlan(m, wave_rows, validate_groups(groups, wave_count(m, wave_rows)))


class OverlappedRowParallelLinear(torch.nn.Module):
    """y = all_reduce(x_r @ W_r^T) (+ bias once) with the all-reduce overlapped group by group.

    weight: this rank's [out_features, in_features / world] slice; bias: full, added by rank 0."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, group=None,
                 policy: GroupPolicy | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        self.group = group
        self.policy = policy or GroupPolicy()
        self.last_plan: WavePlan | None = None

    def device_tag(self) -> str:
        return device_tag(self.weight.device.type, dist.get_backend(self.group),
                          dist.get_world_size(self.group))

    def forward(self, x: torch.Tensor, epilogue: Epilogue | None = None) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        n, k = self.weight.shape
        plan = self.policy.plan(x2.shape[0], n, k, self.device_tag(), x2.element_size())
        self.last_plan = plan
        bias = self.bias if dist.get_rank(self.group) == 0 else None
        out = overlapped_gemm_all_reduce(x2, self.weight, bias, plan.row_ranges(), self.group, epilogue)
        return out.view(*lead, n)
