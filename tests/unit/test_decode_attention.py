"""semipd_cpu's batched decode attention against SGLang's own torch_native decode, same tensors.

Pools with token slots scattered over them and request rows scattered in req_to_token, as a
serving engine leaves them; float32 must agree to rounding, bfloat16 to one rounding of the output.
"""

from __future__ import annotations

import pytest
import torch

from engine.attention.batched_decode import FORMULATIONS, batched_decode_attention, build_decode_metadata, fused_available
from engine.device_env import prepare_cpu_process_env

SHAPES = [  # batch, shortest and longest context, KV heads, query heads per KV head, head dim
    (1, 1, 1, 8, 1, 64), (1, 700, 700, 8, 1, 64), (4, 1, 700, 4, 2, 64), (16, 100, 700, 8, 1, 64),
    (5, 1, 300, 2, 1, 128), (3, 1, 200, 2, 4, 80),  # 80: not a multiple of 32, the kernel's plain-C path
]


def torch_native():
    prepare_cpu_process_env()
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

    return object.__new__(TorchNativeAttnBackend)  # its decode method uses no instance state


def case(gen, batch, lo, hi, hkv, groups, d, dtype, slots=8192, rows=32, ctx=1024):
    lens = torch.randint(lo, hi + 1, (batch,), generator=gen)
    where = torch.randperm(slots, generator=gen)[: int(lens.sum())] + 1  # slot 0 is SGLang's padding
    req_to_token = torch.randint(0, slots + 1, (rows, ctx), generator=gen, dtype=torch.int32)
    picked = torch.randperm(rows, generator=gen)[:batch]
    start = 0
    for row, n in zip(picked.tolist(), lens.tolist()):
        req_to_token[row, :n] = where[start:start + n].to(torch.int32)
        start += n
    kv = torch.randn(2, slots + 1, hkv, d, generator=gen).to(dtype)
    q = torch.randn(batch, hkv * groups, d, generator=gen).to(dtype)
    return q, kv[0], kv[1], req_to_token, picked.long(), lens.long()


@pytest.mark.parametrize("formulation", [f for f in FORMULATIONS if f != "fused" or fused_available()])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_batched_decode_equals_torch_native(formulation, dtype, tolerance):
    reference, gen = torch_native(), torch.Generator().manual_seed(7)
    for batch, lo, hi, hkv, groups, d in SHAPES:
        q, k, v, req_to_token, rows, lens = case(gen, batch, lo, hi, hkv, groups, d, dtype)
        expected = torch.empty_like(q)
        reference._run_sdpa_forward_decode(q, expected, k, v, req_to_token, rows, lens, scaling=d ** -0.5,
                                           enable_gqa=groups > 1, causal=False)
        meta = build_decode_metadata(req_to_token, rows, lens, formulation=formulation)
        got = batched_decode_attention(q, k, v, meta, scaling=d ** -0.5)
        assert got.dtype == q.dtype
        error = (got.float() - expected.float()).abs().max().item()
        assert error < tolerance, f"{formulation} {dtype} batch {batch} ctx {lo}-{hi} G {groups} D {d}: {error}"


def test_the_c_kernel_builds_here():
    """The default formulation needs a C compiler; the machines this runs on have gcc."""
    from engine.attention import fused_kernel

    assert fused_available(), fused_kernel.load_error()
