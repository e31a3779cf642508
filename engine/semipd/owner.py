"""The semi-PD owner: SGLang's scheduler, decoding on its own partition while a prefill worker
prefills on another, both over one set of weights, one KV pool and one radix tree.

This process keeps everything SGLang's scheduler owns (request queues, radix tree, KV allocator,
request table, sampling, streaming) and so allocation has a single owner. Each loop iteration:
1. take new requests and admin commands;
2. if the prefill worker has finished its batch, complete that batch through SGLang's own
   run_batch/process_batch_result (the worker's logits are injected in place of a local forward),
   which samples, streams the first token and inserts the prefix into the radix tree;
3. if the prefill worker is idle, let SGLang's own scheduling merge the finished batch into the
   decode batch and form the next prefill batch (allocating its KV), and send it to the worker;
4. run one decode step locally, as SGLang does.
Decode therefore never waits for a prefill, and prefill waits at most one decode step for its
next batch.
"""

from __future__ import annotations

import os
import time
from collections import deque

import torch
from sglang.srt.managers.overlap_utils import resolve_forward_inputs
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.model_executor.forward_batch_info import ForwardBatch
from sglang.srt.model_executor.model_runner import ModelRunnerOutput
from sglang.srt.runtime_context import get_serving

from contract import split_state
from engine.partition import InvalidSplit, Split, Workers, parse_split
from engine.partition.cpu import CpuCores
from engine.semipd.control_channel import ControlServer
from engine.semipd.metrics import SemiPDMetrics
from engine.semipd.prefill_worker import PrefillLink
from engine.semipd.settings import ENV_CONTROL, ENV_LEND_IDLE, ENV_SPLIT
from engine.semipd.shared_storage import SharedStorage
from engine.sglang_seams import inject_forward

STEP_RECORDS = 20_000
HISTORY_RECORDS = 10_000


class SemiPDScheduler(Scheduler):
    def __init__(self, server_args, port_args):
        self._semipd_storage = SharedStorage.new("storage")
        super().__init__(server_args, port_args)
        model_runner = self.tp_worker.model_runner
        self._semipd_storage.share_parameters(model_runner.model)
        self._semipd_injected: ModelRunnerOutput | None = None
        inject_forward(model_runner, self._take_injected)

        self.partition = CpuCores()
        self.lend_idle_cores = os.environ.get(ENV_LEND_IDLE) == "1"
        split = parse_split(os.environ.get(ENV_SPLIT, "1,1"))
        self.partition.check(split)
        self.prefill_link = PrefillLink(server_args, str(self._semipd_storage.directory),
                                        threads=split.prefill)
        self.prefill_link.wait_ready()
        self.finished_prefill = None  # a completed extend batch, merged at the next formation
        self.steps: deque[dict] = deque(maxlen=STEP_RECORDS)
        self.split_history: deque[dict] = deque(maxlen=HISTORY_RECORDS)
        self.split: Split | None = None
        self.semipd_metrics = SemiPDMetrics({"model_name": str(get_serving().served_model_name)})
        self._workers = Workers(pids=lambda: {"prefill": self.prefill_link.pid, "decode": os.getpid()},
                                set_threads=self._set_threads)
        self.apply_split(split, who="launch")
        self.control = ControlServer(os.environ[ENV_CONTROL])

    # -- storage -----------------------------------------------------------------------------
    def init_memory_pools(self):
        with self._semipd_storage.shared_allocations("pool"):
            super().init_memory_pools()

    def _take_injected(self) -> ModelRunnerOutput | None:
        """The prefill worker's logits, once: run_batch then completes that batch without a forward."""
        out, self._semipd_injected = self._semipd_injected, None
        return out

    # -- the loop ----------------------------------------------------------------------------
    def event_loop_normal(self):
        while not self.gracefully_exit:
            self.ingest_requests()
            self.control.serve_pending(self.handle_control)
            finished = self.prefill_link.poll()
            if finished is not None:
                self._complete_prefill(*finished)
            decode_batch = None
            if not self.prefill_link.busy:
                plan = self.get_next_batch_to_run(self.running_batch, self.finished_prefill)
                self.finished_prefill = None
                self.running_batch = plan.running_batch
                batch = plan.batch_to_run
                if batch is not None and batch.forward_mode.is_extend():
                    if self.lend_idle_cores:  # decode is idle during this prefill iff nothing runs
                        self.partition.lend("decode", False, self._workers)
                        self.partition.lend("prefill", self.running_batch.is_empty(), self._workers)
                    self._launch_prefill(batch)
                    decode_batch = self._next_decode_batch()
                else:
                    decode_batch = batch  # SGLang formed a decode batch: nothing to prefill
            else:
                decode_batch = self._next_decode_batch()
            self.semipd_metrics.record_queues(len(self.waiting_queue), self.running_batch.batch_size())

            # SGLang's watchdog counts a loop with a current batch and no new step as hung: the
            # batch must be None whenever this loop runs no step, or an idle server is killed.
            self.cur_batch_for_debug = decode_batch
            if decode_batch is not None:
                if self.lend_idle_cores:  # no prefill can start before this decode step ends
                    self.partition.lend("decode", not self.prefill_link.busy, self._workers)
                context = sum(len(r.origin_input_ids) + len(r.output_ids) for r in decode_batch.reqs)
                started = time.time()
                result = self.run_batch(decode_batch)
                self.process_batch_result(decode_batch, result)
                self._record_step("decode", started, time.time(), decode_batch.batch_size(),
                                  decode_batch.batch_size(), context, self.partition.cores_of("decode"))
                self.last_batch = decode_batch
            elif self.prefill_link.busy:
                self.prefill_link.poll_wait(1)  # until the prefill finishes or 1 ms passes
            else:
                self.last_batch = None
                self._sched_idled = True
                self.on_idle()
                self.prefill_link.poll_wait(1)

    def _next_decode_batch(self):
        running = self.running_batch
        if running.is_empty() or running.is_prefill_only:
            return None
        batch = self.update_running_batch(running)
        return batch if batch is not None and not batch.is_empty() else None

    def _launch_prefill(self, batch) -> None:
        resolve_forward_inputs(batch, self.future_map)
        forward_batch = ForwardBatch.init_new(batch, self.tp_worker.model_runner,
                                              return_hidden_states_before_norm=False)
        self.prefill_link.launch(batch, forward_batch)
        self._prefill_cores = self.partition.cores_of("prefill")

    def _complete_prefill(self, batch, forward_batch, result) -> None:
        self._semipd_injected = ModelRunnerOutput(logits_output=result.logits_output, can_run_graph=False)
        run_result = self.run_batch(batch)
        self.process_batch_result(batch, run_result)
        self.finished_prefill = batch
        self._record_step("prefill", result.started, result.finished, batch.batch_size(),
                          int(batch.extend_num_tokens or 0), sum(batch.prefix_lens or ()), self._prefill_cores)

    def _record_step(self, worker: str, started: float, finished: float, batch_size: int, tokens: int,
                     context: int, cores: list[int]):
        # context: tokens already in the KV cache that this step attends to (decode: every
        # sequence's length; prefill: the cached prefixes), for fitting step-time models.
        self.steps.append({"worker": worker, "start": started, "end": finished, "batch_size": batch_size,
                           "tokens": tokens, "context": context, "cores": cores})
        self.semipd_metrics.record_step(worker, finished - started, batch_size)

    # -- the split -----------------------------------------------------------------------------
    def _set_threads(self, role: str, threads: int) -> None:
        if role == "decode":
            torch.set_num_threads(threads)
        else:
            self.prefill_link.set_threads(threads)

    def apply_split(self, split: Split, who: str) -> dict:
        started = time.perf_counter()
        in_force = self.partition.apply(split, self._workers)
        switch_s = time.perf_counter() - started
        record = {"time": time.time(), "old": str(self.split) if self.split else None, "new": str(split),
                  "who": who, "switch_ms": switch_s * 1e3, **in_force}
        self.split = split
        self.split_history.append(record)
        self.semipd_metrics.record_split(split.prefill, split.decode)
        if record["old"] is not None:
            self.semipd_metrics.record_switch(switch_s)
        return record

    def handle_control(self, request: dict) -> dict:
        op = request.get("op")
        if op == "get_split":
            return {"ok": True, **self.split_state()}
        if op == "set_split":
            try:
                split = Split(request.get("prefill"), request.get("decode"))
                self.partition.check(split)
            except InvalidSplit as exc:
                return {"ok": False, "status": 400, "error": str(exc)}
            record = self.apply_split(split, who=str(request.get("who") or "admin"))
            return {"ok": True, "applied": record, **self.split_state()}
        if op == "steps":
            since = float(request.get("since") or 0)
            return {"ok": True, "steps": [s for s in self.steps if s["end"] >= since]}
        if op == "workers":
            return {"ok": True, "pids": self._workers.pids(),
                    "storage": str(self._semipd_storage.directory)}
        return {"ok": False, "status": 400, "error": f"unknown op {op!r}"}

    def split_state(self) -> dict:
        return split_state(self.split.prefill, self.split.decode, backend=self.partition.name,
                           unit=self.partition.unit, units=self.partition.units,
                           valid=self.partition.valid_range(), history=list(self.split_history),
                           lend_idle_cores=self.lend_idle_cores)

