"""`semipd_cpu`: SGLang's torch_native attention backend with a batched decode path.

Prefill (extend) is TorchNativeAttnBackend's own. Decode attention of the whole batch goes through
batched_decode.py: the batch's token slots become gather indices once per forward batch
(init_forward_metadata) and every layer reuses them. What the batched path does not cover
(cross-attention, encoder-decoder batches, sliding-window layers or pools) falls back to
torch_native's per-sequence decode. As torch_native, no logit cap is applied (it ignores
RadixAttention.logit_cap in prefill and decode alike; capping decode only would make the phases
disagree).

Registered through SGLang's own attention-backend registry (engine/sglang_seams.py) in every
process that builds a model runner: the launcher (before its flags are parsed), the scheduler
process and semi-PD's prefill worker. `SEMIPD_DECODE_ATTENTION=fused|flat` forces a formulation;
by default the C kernel when it builds here, else plain torch.
"""

from __future__ import annotations

import logging
import os

from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
from sglang.srt.mem_cache.memory_pool import KVWriteLoc

from engine.attention import BACKEND_NAME
from engine.attention.batched_decode import (FORMULATIONS, DecodeMeta, Workspace, batched_decode_attention,
                                             build_decode_metadata, fused_available)
from engine.sglang_seams import register_attention_backend

logger = logging.getLogger(__name__)

FORMULATION_ENV = "SEMIPD_DECODE_ATTENTION"


def chosen_formulation() -> str:
    chosen = os.environ.get(FORMULATION_ENV, "").strip().lower()
    if not chosen:
        return "fused" if fused_available() else "flat"
    if chosen not in FORMULATIONS:
        raise ValueError(f"{FORMULATION_ENV}={chosen!r} is not valid; valid: {', '.join(FORMULATIONS)}")
    if chosen == "fused" and not fused_available():
        raise RuntimeError(f"{FORMULATION_ENV}=fused, but the C kernel does not build here (is a C compiler installed?)")
    return chosen


class SemiPDCpuAttnBackend(TorchNativeAttnBackend):
    def __init__(self, model_runner, formulation: str | None = None):
        super().__init__(model_runner)
        self.formulation = formulation or chosen_formulation()
        self.workspace = Workspace()
        self.decode_meta: DecodeMeta | None = None
        logger.info("semipd_cpu attention: batched decode (%s), torch_native prefill", self.formulation)

    def init_forward_metadata(self, forward_batch):
        super().init_forward_metadata(forward_batch)  # torch_native's sliding-window slot translation
        self.decode_meta = None
        mode = forward_batch.forward_mode
        if mode.is_decode() and not mode.is_idle() and self._batch_supported(forward_batch):
            self.decode_meta = self._build_meta(forward_batch)

    def _batch_supported(self, forward_batch) -> bool:
        return forward_batch.encoder_lens is None and not self.use_sliding_window_kv_pool

    @staticmethod
    def _layer_supported(layer) -> bool:
        return not layer.is_cross_attention and (layer.sliding_window_size is None or layer.sliding_window_size < 0)

    def _build_meta(self, forward_batch) -> DecodeMeta:
        return build_decode_metadata(self.req_to_token_pool.req_to_token, forward_batch.req_pool_indices,
                                     forward_batch.seq_lens, formulation=self.formulation,
                                     seq_lens_cpu=forward_batch.seq_lens_cpu)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        if not (self._layer_supported(layer) and self._batch_supported(forward_batch)):
            return super().forward_decode(q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache)
        q = q.reshape(-1, layer.tp_q_head_num * layer.qk_head_dim)
        o = q.new_empty((q.shape[0], layer.tp_q_head_num * layer.v_head_dim))
        # The new token's K/V go into the pool first, as torch_native does: seq_lens count it.
        if save_kv_cache and k is not None and v is not None:
            self.token_to_kv_pool.set_kv_buffer(layer, KVWriteLoc(forward_batch.out_cache_loc, self.swa_out_cache_loc),
                                                k, v)
        meta = self.decode_meta
        if meta is None or meta.batch != q.shape[0]:  # a caller that skipped init_forward_metadata
            meta = self.decode_meta = self._build_meta(forward_batch)
        batched_decode_attention(q.view(-1, layer.tp_q_head_num, layer.qk_head_dim),
                                 self.token_to_kv_pool.get_key_buffer(layer.layer_id),
                                 self.token_to_kv_pool.get_value_buffer(layer.layer_id), meta,
                                 scaling=layer.scaling, out=o.view(-1, layer.tp_q_head_num, layer.v_head_dim),
                                 workspace=self.workspace)
        return o


def create_backend(model_runner):
    return SemiPDCpuAttnBackend(model_runner)


def register() -> None:
    """Make `--attention-backend semipd_cpu` valid and buildable in this process (idempotent)."""
    register_attention_backend(BACKEND_NAME, create_backend)
