"""semipd's CPU attention backend: SGLang's torch_native prefill, with decode attention batched
over the paged KV pool (`semipd_cpu`, the default of `semipd serve` on CPU, in every mode).
This module stays light (no torch): the launcher reads the name before anything is imported."""

BACKEND_NAME = "semipd_cpu"
