"""Named GPUs and models for the simulator's roofline, each number with where it comes from.

Hardware peaks are vendor datasheet figures (dense BF16 tensor throughput, HBM bandwidth, memory).
The efficiencies are ours: `compute_efficiency` matches Vidur's measured A100 GEMM times for
Llama-3-8B (mlp_up_proj at 32k tokens: 33.1 ms measured vs 24.7 ms at peak, 0.75; see
docs/paper-comparison.md for the whole comparison); `bandwidth_saturation` is the share of SMs at
which a memory-bound kernel reaches full bandwidth (an assumption, in line with the semi-PD and
Nexus papers' observation that decode needs few SMs).
Model shapes are from each model's published config.json.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    name: str
    peak_flops: float          # dense BF16/FP16 tensor FLOP/s
    mem_bandwidth: float       # HBM bytes/s
    memory_bytes: float
    sms: int
    link_bandwidth: float      # bytes/s between devices of one node (NVLink, per direction)
    source: str
    compute_efficiency: float = 0.75
    bandwidth_efficiency: float = 0.8
    bandwidth_saturation: float = 0.4
    step_overhead_s: float = 0.002     # launch and scheduling per engine step
    link_latency_s: float = 2e-5
    inter_node_bandwidth: float = 25e9 / 8  # 25 Gbps, DistServe's testbed between nodes
    units: int = 100           # a split is given in percent of the SMs
    clock_hz: float = 0.0      # boost clock: elementwise kernels cost SM cycles
    l2_bytes: float = 0.0
    topology: str = "nvswitch"  # between a node's devices: nvswitch | pairwise-nvlink | pcie


@dataclass(frozen=True)
class Model:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    params: float              # all weights
    source: str
    active_params: float = 0.0  # per token (MoE); 0 = all
    routed_params: float = 0.0  # MoE expert weights, read only for the experts a batch touches
    experts: int = 0
    top_k: int = 0
    kv_elements_per_layer: int = 0  # per token; 0 = 2 * kv_heads * head_dim (MLA caches a latent)
    attn_flops_per_pair: float = 0.0  # per layer and (query, key) pair; 0 = 4 * heads * head_dim
    default_tp: int = 1
    bytes_per_param: int = 2
    vocab: int = 0              # 0: the embedding and LM head are counted as layers (per token)
    tied_embeddings: bool = False  # one matrix for the embedding and the LM head

    @property
    def kv_bytes_per_token(self) -> float:
        per_layer = self.kv_elements_per_layer or 2 * self.kv_heads * self.head_dim
        return self.layers * per_layer * self.bytes_per_param

    @property
    def head_params(self) -> float:
        return self.vocab * self.hidden

    @property
    def flops_per_token(self) -> float:
        """In the layers: the embedding is a lookup and the LM head runs only where logits are
        needed (gemm_flops)."""
        embeddings = self.head_params * (1 if self.tied_embeddings else 2)
        return 2 * ((self.active_params or self.params) - embeddings)

    def gemm_flops(self, tokens: float, logits: float) -> float:
        """Weight-GEMM FLOPs of a step over `tokens` tokens, `logits` of which need logits (the
        last token of each prefilled sequence, every decoded one)."""
        return self.flops_per_token * tokens + 2 * self.head_params * logits

    @property
    def pair_flops(self) -> float:
        return self.layers * (self.attn_flops_per_pair or 4 * self.heads * self.head_dim)

    def weight_bytes_read(self, tokens: float) -> float:
        """Weights a step over `tokens` tokens reads: dense weights always, routed experts only as
        far as the batch touches them (each token picks top_k of `experts`)."""
        dense = (self.params - self.routed_params) * self.bytes_per_param
        if not self.routed_params:
            return dense
        touched = 1 - (1 - self.top_k / self.experts) ** max(tokens, 1)
        return dense + self.routed_params * self.bytes_per_param * touched


HARDWARE = {h.name: h for h in (
    Hardware("a100-80gb", 312e12, 2.039e12, 80e9, 108, 300e9,
             "NVIDIA A100 Tensor Core GPU datasheet (SXM4 80GB): 312 TFLOPS BF16 dense, 2,039 GB/s "
             "HBM2e, NVLink 600 GB/s (300 GB/s per direction); NVIDIA A100 architecture whitepaper: "
             "108 SMs, boost clock 1410 MHz, 40 MB L2",
             clock_hz=1.41e9, l2_bytes=40e6),
    Hardware("a40", 149.7e12, 0.696e12, 48e9, 84, 56.25e9,
             "NVIDIA A40 datasheet: 149.7 TFLOPS BF16 tensor dense, 696 GB/s GDDR6, 48 GB, NVLink "
             "bridge 112.5 GB/s for a pair (56.25 per direction), PCIe Gen4; NVIDIA Ampere GA102 "
             "whitepaper: 84 SMs, boost clock 1740 MHz, 6 MB L2",
             clock_hz=1.74e9, l2_bytes=6e6, topology="pairwise-nvlink"),
    Hardware("h100", 989e12, 3.35e12, 80e9, 132, 450e9,
             "NVIDIA H100 Tensor Core GPU datasheet (SXM5): 989 TFLOPS BF16 dense, 3.35 TB/s HBM3, "
             "NVLink 900 GB/s; H100 whitepaper: 132 SMs, boost clock 1980 MHz, 50 MB L2",
             clock_hz=1.98e9, l2_bytes=50e6),
    Hardware("h200", 989e12, 4.8e12, 141e9, 132, 450e9,
             "NVIDIA H200 Tensor Core GPU datasheet (SXM): 989 TFLOPS BF16 dense, 4.8 TB/s HBM3e, "
             "141 GB, NVLink 900 GB/s; the H100's die: 132 SMs, 1980 MHz, 50 MB L2",
             clock_hz=1.98e9, l2_bytes=50e6),
)}

MODELS = {m.name: m for m in (
    Model("llama-3-8b", layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128, params=8.03e9,
          vocab=128256,
          source="meta-llama/Meta-Llama-3-8B config.json (32 layers, hidden 4096, 32 heads, 8 KV "
                 "heads, FFN 14336, vocab 128256); 8.03 B parameters"),
    Model("llama-2-7b", layers=32, hidden=4096, heads=32, kv_heads=32, head_dim=128, params=6.74e9, vocab=32000,
          source="meta-llama/Llama-2-7b-hf config.json (32 layers, hidden 4096, 32 heads and KV heads, "
                 "FFN 11008, vocab 32000); 6.74 B parameters"),
    Model("llama-3-70b", layers=80, hidden=8192, heads=64, kv_heads=8, head_dim=128, params=70.6e9,
          default_tp=4, vocab=128256,
          source="meta-llama/Meta-Llama-3-70B config.json (80 layers, hidden 8192, 64 heads, 8 KV "
                 "heads, FFN 28672); 70.6 B parameters; TP4 as in the semi-PD paper"),
    Model("deepseek-v2-lite", layers=27, hidden=2048, heads=16, kv_heads=1, head_dim=192,
          params=15.7e9, active_params=2.4e9, routed_params=14.0e9, experts=64, top_k=6,
          kv_elements_per_layer=512 + 64, attn_flops_per_pair=2 * 16 * (192 + 128), vocab=102400,
          source="deepseek-ai/DeepSeek-V2-Lite config.json (27 layers, hidden 2048, 16 heads, MLA "
                 "kv_lora_rank 512 + rope 64 cached per token, 64 routed experts top-6 of size "
                 "1408 in 26 layers); 15.7 B total, 2.4 B active parameters"),
    Model("opt-13b", layers=40, hidden=5120, heads=40, kv_heads=40, head_dim=128, params=12.85e9,
          vocab=50272, tied_embeddings=True,
          source="facebook/opt-13b config.json (40 layers, hidden 5120, 40 heads, FFN 20480, "
                 "vocab 50272, word embeddings tied to the LM head); 12.85 B parameters"),
)}
