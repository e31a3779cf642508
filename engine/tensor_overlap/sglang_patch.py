"""SGLang's row-parallel o_proj and down_proj, overlapped, behind `semipd serve --tp-overlap`.

Mechanism: an AROUND hook (SGLang's own HookRegistry) on RowParallelLinear.forward, installed in
every scheduler (= TP rank) process before the model is built. The hook takes the overlapped path
only for layers named o_proj / down_proj in the plain case - unquantized weights, all-reduce over
the TP group, no sequence parallelism, no caller-owned output, not inside torch.compile or CUDA
graph capture, at least two groups for this M - and hands every other call to SGLang unchanged.
Decode steps with few tokens therefore run the stock path; prefill chunks run overlapped.

The setting travels to the spawned scheduler processes in SEMIPD_TP_OVERLAP ('auto' or a group
count), like semi-PD mode's settings (ServerArgs is sealed). This module imports no torch or
sglang at the top: `semipd serve --help` stays light.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref

ENV = "SEMIPD_TP_OVERLAP"
# Optional JSON of CostModel fields (e.g. from `semipd bench-overlap --calibrate`) for 'auto'.
MODEL_ENV = "SEMIPD_TP_OVERLAP_MODEL"
TARGET = "sglang.srt.layers.linear.RowParallelLinear.forward"
# RowParallelLinear does not keep its prefix (the layer's name); a hook on __init__ records it.
INIT_TARGET = "sglang.srt.layers.linear.RowParallelLinear.__init__"
PREFIX_ATTR = "_semipd_prefix"
# SGLang's Llama builds o_proj / down_proj with reduce_results=False and sums their output in the
# next layer boundary, fused with the residual add + RMSNorm where the backend can. Overlapping
# means summing inside the linear instead, so the boundary's all-reduce of that very tensor over
# the same ranks must then be skipped: a mark per thread, checked by a hook on
# GroupCoordinator.all_reduce (every TP/attention-TP sum goes through it on this path). The mark
# holds a weak reference to the output: once the tensor is gone its memory may be reused, and the
# mark must never match a stranger at the same address.
ALL_REDUCE_TARGET = "sglang.srt.distributed.parallel_state.GroupCoordinator.all_reduce"
_summed = threading.local()
LAYER_NAMES = ("o_proj", "down_proj")
LOG = "semipd tensor-overlap"

_state = {"installed": False, "policy": None, "announced": set()}


def parse_mode(text: str) -> tuple[str, int]:
    """'auto' -> ('auto', 0); 'N' -> ('fixed', N) for N >= 1; else ValueError with valid values."""
    value = str(text).strip().lower()
    if value == "auto":
        return "auto", 0
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"{text!r} is invalid; valid: 'auto' (the tuner picks groups per shape) or a "
                         f"group count >= 1 (equal groups of output rows)")
    return "fixed", count


def configure(text: str, environ=os.environ) -> str:
    """Check the --tp-overlap value and export it for the scheduler processes."""
    parse_mode(text)
    environ[ENV] = str(text).strip().lower()
    return environ[ENV]


def model_from_env(environ=os.environ):
    """The CostModel given in SEMIPD_TP_OVERLAP_MODEL, or None for the device's default."""
    text = environ.get(MODEL_ENV)
    if not text:
        return None
    import json

    from engine.tensor_overlap.wave_schedule import CostModel

    fields = {k: v for k, v in json.loads(text).items() if k in CostModel.__dataclass_fields__}
    return CostModel(**fields)


def install(mode_text: str | None = None) -> bool:
    """Register the hook and apply it (idempotent). Returns False when disabled."""
    text = mode_text if mode_text is not None else os.environ.get(ENV, "")
    if not text or text == "off":
        return False
    if _state["installed"]:
        return True
    from engine.sglang_seams import register_around_hooks
    from engine.tensor_overlap.overlapped_linear import GroupPolicy

    mode, count = parse_mode(text)
    _state["policy"] = GroupPolicy(mode=mode, count=max(count, 1), model=model_from_env())
    register_around_hooks({INIT_TARGET: _around_init, TARGET: _around_forward,
                           ALL_REDUCE_TARGET: _around_group_all_reduce})
    _state["installed"] = True
    print(f"{LOG}: installed on {', '.join(LAYER_NAMES)} (groups: {text})", file=sys.stderr, flush=True)
    return True


def _around_init(original, self, *args, **kwargs):
    import inspect

    original(self, *args, **kwargs)
    bound = inspect.signature(original).bind(self, *args, **kwargs)
    setattr(self, PREFIX_ATTR, str(bound.arguments.get("prefix", "")))


def _layer_name(layer) -> str:
    return getattr(layer, PREFIX_ATTR, "").rsplit(".", 1)[-1]


def _tp_coordinator(layer, input_, skip_all_reduce, output_tensor):
    """(SGLang's GroupCoordinator, '') when this call may take the overlapped path, else
    (None, the reason)."""
    import torch
    from sglang.srt.layers.moe.utils import should_skip_mlp_all_reduce
    from sglang.srt.runtime_context import get_exec, get_forward

    if _layer_name(layer) not in LAYER_NAMES:
        return None, f"not o_proj/down_proj: {getattr(layer, PREFIX_ATTR, None)!r}"
    if skip_all_reduce or output_tensor is not None:
        return None, "caller skips the all-reduce or owns the output"
    if not layer.input_is_parallel or layer.use_dp_attention_reduce \
            or getattr(layer, "use_decode_attn_tp", False) or layer.parallel_group not in (None, "tp"):
        return None, "not a plain TP row-parallel layer"
    comm = get_exec().comm
    if not layer.reduce_results and (getattr(comm, "flashinfer_allreduce_fusion_backend", None) is not None
                                     or getattr(comm, "enable_aiter_allreduce_fusion", False)):
        return None, "the boundary fuses its all-reduce into a kernel we cannot skip"
    if type(layer.quant_method).__name__ != "UnquantizedLinearMethod" \
            or getattr(layer, "use_intel_amx_backend", False):
        return None, "packed or quantized weights"  # the GEMM is not a plain matmul of layer.weight
    group = layer.tp_group
    if getattr(group, "device_group", None) is None or group.world_size < 2:
        return None, "no TP group of 2+ ranks"
    if get_forward().sp_active or should_skip_mlp_all_reduce() or comm.enable_quant_communications:
        return None, "sequence parallel / fused MoE reduce / quantized communication"
    if torch.compiler.is_compiling():
        return None, "inside torch.compile"
    if input_.is_cuda:
        from sglang.srt.layers.dp_attention import is_allocation_symmetric

        if torch.cuda.is_current_stream_capturing() or is_allocation_symmetric():
            return None, "CUDA graph capture or symmetric memory"  # async NCCL waits are not capturable
    if input_.dtype != layer.weight.dtype or input_.shape[-1] != layer.weight.shape[1]:
        return None, "input dtype or width differs from the weight"
    return group, ""


def _around_forward(original, self, input_, skip_all_reduce=False, forward_batch=None, output_tensor=None):
    group, why = _tp_coordinator(self, input_, skip_all_reduce, output_tensor)
    if group is not None:
        import torch.distributed as dist

        from engine.tensor_overlap.overlapped_linear import overlapped_gemm_all_reduce
        from engine.tensor_overlap.wave_schedule import device_tag

        x = input_.reshape(-1, input_.shape[-1])
        n, k = self.weight.shape
        tag = device_tag(x.device.type, dist.get_backend(group.device_group), group.world_size)
        plan = _state["policy"].plan(x.shape[0], n, k, tag, x.element_size())
        if len(plan.groups) > 1:
            bias = None if group.rank_in_group > 0 or self.skip_bias_add else self.bias
            out = overlapped_gemm_all_reduce(x, self.weight, bias, plan.row_ranges(), group.device_group)
            _announce(self, plan, n, k)
            if not self.reduce_results:  # the boundary would sum it again
                _summed.mark = (weakref.ref(out), out.data_ptr(), out.numel(), tuple(group.ranks))
            return out.view(*input_.shape[:-1], n), (self.bias if self.skip_bias_add else None)
        why = f"one group for M={x.shape[0]}"
    if os.environ.get(ENV + "_DEBUG") and why not in _state["announced"]:
        _state["announced"].add(why)
        print(f"{LOG}: stock path: {why}", file=sys.stderr, flush=True)
    return original(self, input_, skip_all_reduce, forward_batch, output_tensor)


def _around_group_all_reduce(original, self, input_, *args, **kwargs):
    mark = getattr(_summed, "mark", None)
    if mark is not None and mark[0]() is None:
        mark = _summed.mark = None  # the summed output is gone; nothing can match it any more
    if mark is not None:
        if mark[1:] == (input_.data_ptr(), input_.numel(), tuple(self.ranks)):
            _summed.mark = None
            if "skip" not in _state["announced"]:
                _state["announced"].add("skip")
                print(f"{LOG}: the layer boundary's all-reduce of an overlapped output is skipped "
                      "(summed inside the layer)", file=sys.stderr, flush=True)
            return input_  # summed already, group by group, inside o_proj / down_proj
    return original(self, input_, *args, **kwargs)


def _announce(layer, plan, n: int, k: int) -> None:
    """One line per layer kind, the first time it runs overlapped: proof in the server log."""
    kind = _layer_name(layer)
    if kind not in _state["announced"]:
        _state["announced"].add(kind)
        print(f"{LOG}: {kind} overlapped: M={plan.m} N={n} K={k} (of {layer.input_size}) "
              f"groups={list(plan.groups)} x {plan.wave_rows} rows", file=sys.stderr, flush=True)
