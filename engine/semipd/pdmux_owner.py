"""semi-pd mode on an NVIDIA GPU: SGLang's PD multiplexing, its stream group chosen by the split.

SGLang's pdmux (`--enable-pdmux`) already runs prefill and decode at the same time in one process,
on two CUDA streams of disjoint green contexts, over its one KV pool and radix tree. What it lacks
is control: its group is picked from the decode batch size by a table it marks as a demo. Here the
groups are built from semipd's menu of SM splits (engine/partition/sm_groups.py) and the group in
use is the split in force, set through `/semipd/split` by an operator or the tuner, exactly as on
CPU. The new split takes effect at pdmux's next batch boundary (a prefill batch starting or
ending, or decode emptying).

Not verified on hardware: no GPU has run this file. What is tested (against fakes of CUDA and of
sgl_kernel) is that SGLang's own stream-group setup receives the menu, that each step picks the
group of the split in force, and every refusal.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque

from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.multiplex.pdmux_context import (PDMuxConfig, get_sm_counts, get_stream_groups,
                                                initialize_stream_groups, set_current_stream_idx)
from sglang.srt.runtime_context import get_device, get_serving

from contract import split_state
from engine.partition import InvalidSplit, Split, Workers, parse_split
from engine.partition.green_contexts import sm_granularity
from engine.partition.sm_groups import PdmuxSmGroups, sm_menu, stream_index
from engine.semipd.control_channel import ControlServer
from engine.semipd.metrics import SemiPDMetrics
from engine.semipd.settings import ENV_CONTROL, ENV_SPLIT
from engine.semipd.split_log import log_split, new_history, requested_split

logger = logging.getLogger(__name__)


def device_sms_and_major(gpu_id: int) -> tuple[int, int]:
    """SMs this process may use (what pdmux splits) and the compute capability's major version."""
    import torch
    from sgl_kernel import spatial

    return spatial.get_sm_available(gpu_id), torch.cuda.get_device_capability(gpu_id)[0]


def initial_split(text: str | None, partition: PdmuxSmGroups) -> Split:
    """The split asked for at start, or the menu's most even pair when none was."""
    if not text:
        return Split(*min(partition.menu.pairs, key=lambda pair: abs(pair[0] - pair[1])))
    split = parse_split(text)
    partition.check(split)
    return split


class PdmuxSemiPDScheduler(Scheduler):
    def init_pdmux(self):
        """SGLang's init_pdmux, with semipd's menu of SM splits as the stream groups."""
        self.split_prefill_batch = None
        gpu_id = get_device().gpu_id
        device_sms, major = device_sms_and_major(gpu_id)
        asked = os.environ.get(ENV_SPLIT) or None
        include = parse_split(asked) if asked else None
        self.partition = PdmuxSmGroups(sm_menu(device_sms, sm_granularity(major), include=include))
        menu = self.partition.menu
        # The third field is pdmux's decode batch-size threshold, which only its own chooser reads.
        self.pdmux_config = PDMuxConfig(sm_group_num=menu.groups,
                                        manual_divisions=[[p, d, 0] for p, d in menu.pairs])
        initialize_stream_groups(gpu_id, self.pdmux_config)
        self.stream_groups = get_stream_groups()
        self.sm_counts = get_sm_counts()
        self.real_sm_group_num = len(self.stream_groups)
        expected = [(device_sms, 0), *menu.pairs, (0, device_sms)]
        if list(map(tuple, self.sm_counts)) != expected:
            raise RuntimeError(f"SGLang built the stream groups {self.sm_counts}, not semipd's {expected}")

        self.split_history: deque[dict] = new_history()
        self.split: Split | None = None
        self.semipd_metrics = SemiPDMetrics({"model_name": str(get_serving().served_model_name)})
        self._workers = Workers(pids=lambda: {"prefill": os.getpid(), "decode": os.getpid()},
                                set_threads=lambda role, n: None)
        try:
            split = initial_split(asked, self.partition)
        except InvalidSplit as exc:
            raise InvalidSplit(f"--split: {exc}") from None
        self.apply_split(split, who="launch")
        self.control = ControlServer(os.environ[ENV_CONTROL])
        logger.info("semi-pd on pdmux: SM splits %s; split in force %s", menu.describe(), split)

    def adjust_stream_groups(self, running_batch):
        """The stream group for the steps until the next boundary: the split in force."""
        index = stream_index(self.partition.menu, self.split, decoding=not running_batch.is_empty(),
                             prefilling=self.split_prefill_batch is not None)
        set_current_stream_idx(index)
        self.tp_worker.model_runner.update_decode_attn_backend(index)
        return index, self.stream_groups[index]

    def ingest_requests(self):
        super().ingest_requests()
        self.control.serve_pending(self.handle_control)  # between steps, as on CPU

    # -- the split -----------------------------------------------------------------------------
    def apply_split(self, split: Split, who: str) -> dict:
        started = time.perf_counter()
        in_force = self.partition.apply(split, self._workers)
        record = log_split(self.split_history, self.semipd_metrics, self.split, split, who,
                           time.perf_counter() - started, unified=False,
                           applies="at the next batch boundary", **in_force)
        self.split = split
        return record

    def split_state(self) -> dict:
        return split_state(self.split.prefill, self.split.decode, backend=self.partition.name,
                           unit=self.partition.unit, units=self.partition.units,
                           valid=self.partition.valid_range(), history=list(self.split_history),
                           menu=[list(pair) for pair in self.partition.menu.pairs], pending=None)

    def handle_control(self, request: dict) -> dict:
        op = request.get("op")
        if op == "get_split":
            return {"ok": True, **self.split_state()}
        if op == "set_split":
            try:
                split = requested_split(request, self.partition)
            except InvalidSplit as exc:
                return {"ok": False, "status": 400, "error": str(exc)}
            record = self.apply_split(split, who=str(request.get("who") or "admin"))
            return {"ok": True, "applied": record, **self.split_state()}
        if op == "steps":
            return {"ok": True, "steps": [], "loop": {}, "note": "per-step records are kept on CPU only"}
        if op == "workers":
            return {"ok": True, "pids": self._workers.pids(), "mode": "pdmux", "repartition": "stream group",
                    "stream_groups": [list(c) for c in self.sm_counts]}
        return {"ok": False, "status": 400, "error": f"unknown op {op!r}"}
