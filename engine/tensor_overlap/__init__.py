"""Tensor-parallel row-parallel layers that overlap their GEMM with the all-reduce (FlashOverlap-style).

Modules: wave_schedule (pure: groups, cost model, tuner, cache), overlapped_linear (the layer),
measure (collective timings, benchmark body), process_group (N local gloo ranks), sglang_patch
(SGLang's o_proj / down_proj behind `semipd serve --tp-overlap`). Importing this package loads
no torch; the submodules that need it import it themselves.
"""
