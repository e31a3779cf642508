"""Reading Vidur's GPU profiles: per-operator CUDA times (`mlp.csv`) and collective times
(`all_reduce.csv`, `send_recv.csv`), the measurements the GPU twin is fitted to.

Vidur (microsoft/vidur, `data/profiling/`; A. Agrawal et al., MLSys 2024) times each operator of a
decoder layer for token counts 1..32k and tensor-parallel degrees 1..8, in milliseconds, with the
model's shape in the same row. Attention is not in these files.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

# The operators of one decoder layer that Vidur times (mlp.csv's `time_stats.<op>.median`).
OPERATORS = ("emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
             "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")


class ProfileError(ValueError):
    pass


@dataclass(frozen=True)
class LayerShape:
    """What an operator's work depends on, as Vidur records it."""
    heads: int
    kv_heads: int
    hidden: int
    ffn: int
    vocab: int
    gated_mlp: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class OperatorTime:
    op: str
    tokens: int
    tp: int
    seconds: float  # the median of Vidur's repetitions


@dataclass(frozen=True)
class CollectiveTime:
    collective: str  # all_reduce | send_recv
    size: int        # bytes
    workers: int
    devices_per_node: int
    seconds: float


def _rows(path: Path) -> list[dict]:
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except OSError as exc:
        raise ProfileError(f"cannot read {path}: {exc}") from None


def read_operators(directory: str | Path) -> tuple[LayerShape, list[OperatorTime]]:
    """A Vidur compute profile: DIR/mlp.csv (DIR may also be the file itself)."""
    path = Path(directory)
    path = path / "mlp.csv" if path.is_dir() else path
    rows = _rows(path)
    if not rows or "num_tokens" not in rows[0]:
        raise ProfileError(f"{path} is not a Vidur mlp.csv (no num_tokens column)")
    first = rows[0]
    try:
        shape = LayerShape(int(first["n_head"]), int(first["n_kv_head"]), int(first["n_embd"]),
                           int(first["n_expanded_embd"]), int(first["vocab_size"]),
                           first["use_gated_mlp"].strip().lower() == "true")
        samples = [OperatorTime(op, int(row["num_tokens"]), int(row["num_tensor_parallel_workers"]),
                                float(row[f"time_stats.{op}.median"]) * 1e-3)
                   for row in rows for op in OPERATORS if row.get(f"time_stats.{op}.median")]
    except (KeyError, ValueError) as exc:
        raise ProfileError(f"{path}: unexpected column or value ({exc})") from None
    return shape, samples


def read_collectives(directory: str | Path) -> list[CollectiveTime]:
    """A Vidur network profile: DIR/all_reduce.csv and DIR/send_recv.csv (either may be absent);
    rank 0's timings."""
    directory = Path(directory)
    samples = []
    for name in ("all_reduce", "send_recv"):
        path = directory / f"{name}.csv"
        if not path.exists():
            continue
        try:
            samples += [CollectiveTime(name, int(float(row["size"])), int(row["num_workers"]),
                                       int(row["devices_per_node"]), float(row[f"time_stats.{name}.median"]) * 1e-3)
                        for row in _rows(path) if int(row["rank"]) == 0]
        except (KeyError, ValueError) as exc:
            raise ProfileError(f"{path}: unexpected column or value ({exc})") from None
    if not samples:
        raise ProfileError(f"{directory} holds no all_reduce.csv or send_recv.csv")
    return samples
