"""Batched decode attention over SGLang's paged KV pool, for CPU.

One decode step has one query token per sequence. SGLang's ``torch_native`` backend loops over
the sequences in Python, gathers each one's K/V with advanced indexing and calls SDPA per
sequence and per layer. Here the whole batch is handled with a constant number of torch calls per
layer:

* the token slots of the batch are the same for every layer of a forward pass, so they are
  turned into gather indices once per forward batch (``build_decode_metadata``);
* ``"fused"`` (fastest; needs a C compiler): a small C kernel (fused_kernel.c, built on first use
  by fused_kernel.py) reads each token's K/V row straight out of the pool, converts it to float32
  in registers and runs a two-pass softmax per sequence: no gathered copies, no padding;
* ``"flat"`` (plain torch, the fallback without a compiler): per layer one ``index_select`` of
  all T tokens' K and V, float32 conversion, per-token scores, segment softmax (scatter_reduce
  amax / index_add) and index_add of the weighted V rows (a padded batched matmul with a mask
  was slower than SGLang's loop here);
* scratch buffers are reused between layers and steps (``Workspace``), so the large temporaries
  do not page-fault fresh memory on every call.

All math is float32 whatever the pool dtype; the output is in q's dtype.

Shapes (SGLang's conventions):
    q            [B, H, D]          query of the one new token per sequence
    k_cache      [S, Hkv, D]        one layer's key pool (any float dtype); v_cache likewise [S, Hkv, Dv]
    req_to_token [R, C] int         slot of every token of every request row
    req_pool_indices [B], seq_lens [B]
    H = Hkv * G (grouped-query attention with G query heads per KV head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from engine.attention import fused_kernel

FORMULATIONS = ("flat", "fused")


class Workspace:
    """Growable scratch buffers, one per name, handed out as views of the requested shape.

    Large CPU allocations are served by fresh mmap'ed pages, and first-touching them costs about
    as much as the copy that fills them; keeping the buffers between layers and steps avoids it.
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, name: str, shape, dtype: torch.dtype, device) -> torch.Tensor:
        numel = 1
        for s in shape:
            numel *= int(s)
        key = (name, dtype)
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < numel or buf.device != torch.device(device):
            # grow by a margin so that slowly growing contexts do not reallocate every step
            buf = torch.empty(max(numel, int(numel * 1.25)), dtype=dtype, device=device)
            self._bufs[key] = buf
        return buf[:numel].view(*shape)


@dataclass
class DecodeMeta:
    """Gather indices for one forward batch, shared by every layer."""

    formulation: str
    batch: int
    max_len: int
    num_tokens: int  # sum(seq_lens)
    # flat:  [T] slots of all tokens, and seg [T] the batch row of each token
    # fused: [T] slots as for flat, and offsets [B + 1] (sequence b owns index[off[b]:off[b+1]])
    index: torch.Tensor
    seg: Optional[torch.Tensor] = None
    offsets: Optional[torch.Tensor] = None


def build_decode_metadata(
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    formulation: str = "fused",
    seq_lens_cpu: Optional[torch.Tensor] = None,
) -> DecodeMeta:
    """Turn (req_to_token, req_pool_indices, seq_lens) into gather indices, once per batch."""
    if formulation not in FORMULATIONS:
        raise ValueError(f"unknown formulation {formulation!r}; valid: {FORMULATIONS}")
    device = req_to_token.device
    batch = int(req_pool_indices.shape[0])
    lens = seq_lens.to(device=device, dtype=torch.long)
    lens_host = seq_lens_cpu if seq_lens_cpu is not None else lens
    max_len = int(lens_host.max()) if batch else 0
    num_tokens = int(lens_host.sum()) if batch else 0
    rows = req_to_token.index_select(0, req_pool_indices.to(device=device, dtype=torch.long))
    rows = rows[:, :max_len].to(torch.long)  # [B, Lmax]
    pos = torch.arange(max_len, device=device)
    valid = pos.unsqueeze(0) < lens.unsqueeze(1)  # [B, Lmax]
    index = rows[valid]  # row-major: sequence by sequence, positions in order
    if formulation == "fused":
        offsets = torch.zeros(batch + 1, dtype=torch.long, device=device)
        torch.cumsum(lens, 0, out=offsets[1:])
        return DecodeMeta(formulation, batch, max_len, num_tokens, index.contiguous(), offsets=offsets)
    seg = torch.repeat_interleave(torch.arange(batch, device=device), lens, output_size=num_tokens)
    return DecodeMeta(formulation, batch, max_len, num_tokens, index.contiguous(), seg=seg)


def _gather_f32(
    cache: torch.Tensor, index: torch.Tensor, ws: Workspace, name: str
) -> torch.Tensor:
    """cache[index] as float32 [N, Hkv, D]: one index_select (+ one contiguous conversion)."""
    n = int(index.shape[0])
    s, hkv, d = cache.shape
    if not cache.is_contiguous():  # never reshape (= copy) a whole pool: gather from the view
        return cache.index_select(0, index).to(torch.float32)
    flat = cache.view(s, hkv * d)
    if cache.dtype == torch.float32:
        out = ws.get(name + ".f32", (n, hkv * d), torch.float32, cache.device)
        torch.index_select(flat, 0, index, out=out)
        return out.view(n, hkv, d)
    raw = ws.get(name + ".raw", (n, hkv * d), cache.dtype, cache.device)
    torch.index_select(flat, 0, index, out=raw)
    out = ws.get(name + ".f32", (n, hkv * d), torch.float32, cache.device)
    out.copy_(raw)
    return out.view(n, hkv, d)


_DEFAULT_WS = Workspace()


def fused_available() -> bool:
    """True when the C kernel (fused_kernel.c) builds and loads on this machine."""
    return fused_kernel.load() is not None


def batched_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: DecodeMeta,
    scaling: Optional[float] = None,
    logit_cap: float = 0.0,
    out: Optional[torch.Tensor] = None,
    workspace: Optional[Workspace] = None,
) -> torch.Tensor:
    """Decode attention of a whole batch over the paged pool; float32 math, output in q's dtype.

    q [B, H, D]; k_cache [S, Hkv, D]; v_cache [S, Hkv, Dv]; ``meta`` from build_decode_metadata.
    ``scaling`` defaults to 1/sqrt(D). ``logit_cap`` > 0 applies cap * tanh(score / cap) to the
    scaled scores (SGLang's convention); 0 disables it. Returns [B, H, Dv] (written into ``out``
    when given).
    """
    b, h, d = q.shape
    hkv = k_cache.shape[1]
    dv = v_cache.shape[2]
    if h % hkv:
        raise ValueError(f"{h} query heads is not a multiple of {hkv} KV heads")
    g = h // hkv
    if scaling is None:
        scaling = d ** -0.5
    ws = workspace if workspace is not None else _DEFAULT_WS
    if out is None:
        out = torch.empty((b, h, dv), dtype=q.dtype, device=q.device)
    if b == 0:
        return out
    qf = q.to(torch.float32)

    if meta.formulation == "fused":
        qc = qf.contiguous()
        o32 = out if (out.dtype == torch.float32 and out.is_contiguous()) else \
            ws.get("fused.out", (b, h, dv), torch.float32, q.device)
        scratch = ws.get("fused.scratch", (fused_kernel.scratch_elems(meta.max_len, h, hkv, d, dv),),
                         torch.float32, q.device)
        fused_kernel.fused_decode_attention(qc, k_cache, v_cache, meta.index, meta.offsets, meta.max_len,
                                            scaling, logit_cap, o32, scratch)
        if o32 is not out:
            out.copy_(o32)
        return out

    if meta.formulation == "flat":
        t = meta.num_tokens
        seg = meta.seg
        kf = _gather_f32(k_cache, meta.index, ws, "k")  # [T, Hkv, D]
        q_tok = qf.view(b, hkv, g, d).index_select(0, seg)  # [T, Hkv, G, D]
        q_tok.mul_(kf.unsqueeze(2))
        scores = q_tok.sum(-1)  # [T, Hkv, G]
        scores.mul_(scaling)
        if logit_cap > 0:
            scores.div_(logit_cap).tanh_().mul_(logit_cap)
        seg_idx = seg.view(t, 1, 1).expand(t, hkv, g)
        smax = torch.full((b, hkv, g), float("-inf"), dtype=torch.float32, device=q.device)
        smax.scatter_reduce_(0, seg_idx, scores, reduce="amax", include_self=True)
        scores.sub_(smax.index_select(0, seg)).exp_()
        denom = torch.zeros((b, hkv, g), dtype=torch.float32, device=q.device)
        denom.index_add_(0, seg, scores)
        vf = _gather_f32(v_cache, meta.index, ws, "v")  # [T, Hkv, Dv]
        weighted = ws.get("flat.w", (t, hkv, g, dv), torch.float32, q.device)
        torch.mul(vf.unsqueeze(2), scores.unsqueeze(-1), out=weighted)
        acc = torch.zeros((b, hkv, g, dv), dtype=torch.float32, device=q.device)
        acc.index_add_(0, seg, weighted)
        acc.div_(denom.unsqueeze(-1))
        out.view(b, hkv, g, dv).copy_(acc)
        return out

    raise ValueError(f"unknown formulation {meta.formulation!r}")
