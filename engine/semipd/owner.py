"""The semi-PD owner: SGLang's scheduler, decoding on its own partition while a prefill worker
prefills on another, both over one set of weights, one KV pool and one radix tree.

This process keeps everything SGLang's scheduler owns (request queues, radix tree, KV allocator,
request table, sampling, streaming) and so allocation has a single owner. It runs in one of two
modes, switched live at a batch boundary:

- split (semi-PD): each loop iteration takes new requests and admin commands; completes each
  prefill the worker has finished through SGLang's own run_batch/process_batch_result (the
  worker's logits injected in place of a local forward), which samples, streams the first token
  and inserts the prefix into the radix tree, and merges it into the running batch; if the
  worker is idle, lets SGLang's scheduling form the next prefill batch (allocating its KV) and
  sends it; if it is busy, forms the batch after (counting the requests it holds) so that it
  starts the moment the worker is free; then runs one decode step locally. Decode never waits
  for a prefill, and the prefill worker never waits for a decode step.
- unified: the split that gives each phase the whole device (units, units). The owner runs
  SGLang's own loop (prefill and decode batches in turn, on all cores) and the worker stands by.
  The tuner can choose it, so it never has to be worse than stock SGLang.

If the prefill worker dies (exits, is killed, or holds a batch past --prefill-timeout: hung), the
batches it held are prefilled again here (their KV slots are the owner's), the engine serves in
unified mode meanwhile, and a new worker is started; when it is ready the split in force before
returns. Each death is in the split history (`event`), the metrics and the log. A worker is
checked every loop iteration (at most IDLE_WAIT_MS apart when idle), not only when it is sent a
batch.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque

import torch
import zmq
from sglang.srt.managers.overlap_utils import resolve_forward_inputs
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.model_executor.forward_batch_info import ForwardBatch
from sglang.srt.model_executor.model_runner import ModelRunnerOutput
from sglang.srt.runtime_context import get_serving

from contract import split_state
from engine.partition import InvalidSplit, Split, Workers, WorkerStart, parse_split
from engine.partition.cpu import CpuCores, pin_process
from engine.partition.green_contexts import GreenContexts, OwnerStreams, device_stream_table
from engine.partition.mps import MpsPrefillShare
from engine.semipd.control_channel import ControlServer
from engine.semipd.ipc_storage import new_storage
from engine.semipd.loop_timer import LoopTimer
from engine.semipd.metrics import SemiPDMetrics
from engine.semipd.prefill_worker import HUNG_AFTER_S, PIPELINE_DEPTH, PrefillLink, WorkerDied, mailboxes
from engine.semipd.settings import (ENV_CONTROL, ENV_DEVICE, ENV_FRONTEND, ENV_GPU_PARTITION, ENV_LEND_IDLE,
                                    ENV_PIPELINE, ENV_PREFILL_TIMEOUT, ENV_REPARTITION, ENV_SPLIT, ENV_STORAGE)
from engine.semipd.split_log import log_split, new_history, requested_split
from engine.sglang_seams import inject_forward

logger = logging.getLogger(__name__)

STEP_RECORDS = 20_000
IDLE_WAIT_MS = 100


class SemiPDScheduler(Scheduler):
    def __init__(self, server_args, port_args):
        device = os.environ.get(ENV_DEVICE, "cpu")
        self._semipd_storage = new_storage(os.environ.get(ENV_STORAGE, "files"), device)
        super().__init__(server_args, port_args)
        model_runner = self.tp_worker.model_runner
        self._semipd_storage.share_parameters(model_runner.model)
        self._semipd_injected: ModelRunnerOutput | None = None
        inject_forward(model_runner, self._take_injected)

        self.partition = gpu_partition(os.environ.get(ENV_GPU_PARTITION)) if device != "cpu" \
            else CpuCores(frontend=os.environ.get(ENV_FRONTEND, "all"))
        self.lend_idle_cores = os.environ.get(ENV_LEND_IDLE) == "1"
        split_text = os.environ.get(ENV_SPLIT) or ""
        split = parse_split(split_text) if split_text else self.partition.even_split()
        self.partition.check(split)
        self._server_args = server_args
        self._mailboxes = mailboxes(self._semipd_storage)
        self._semipd_storage.publish(pool_config=model_runner.memory_pool_config)  # before any worker starts
        self.prefill_link = self._start_worker(split)
        self.prefill_link.wait_ready()
        self.steps: deque[dict] = deque(maxlen=STEP_RECORDS)
        self.split_history: deque[dict] = new_history()
        self.split: Split | None = None
        self.resume_split: Split | None = None  # the split to return to once a new worker is ready
        # --repartition standby: a new split starts a worker on its prefill share (`standby`), swapped
        # in at a batch boundary once it is ready; the active one serves until then.
        self.swap_standby = os.environ.get(ENV_REPARTITION) == "standby"
        self.standby: tuple[PrefillLink, Split, str] | None = None  # (worker, its split, who asked)
        self._swap_due = False
        self.swaps, self.standby_error = 0, None
        self.worker_split = split  # the split whose prefill share the active worker was started on
        self.timer = LoopTimer()
        self.semipd_metrics = SemiPDMetrics({"model_name": str(get_serving().served_model_name)})
        self.streams: OwnerStreams | None = None  # green contexts: the owner's side of each move
        self.queued_split: tuple[Split, str] | None = None  # asked for while a move was in flight
        if isinstance(self.partition, GreenContexts):
            self.streams = OwnerStreams(device_stream_table(), torch.cuda.current_stream, torch.cuda.set_stream,
                                        torch.cuda.Event, lambda: self.prefill_link.order.moves,
                                        lambda message: self.prefill_link.use_split(message))
        self._workers = Workers(pids=lambda: {"prefill": self.prefill_link.pid, "decode": os.getpid()},
                                set_threads=self._set_threads, frontend_pids=frontend_pids,
                                use_stream=self.streams.use_stream if self.streams else None)
        self.apply_split(split, who="launch")
        self.control = ControlServer(os.environ[ENV_CONTROL])

    def _start_worker(self, split: Split) -> PrefillLink:
        """A prefill worker on `split`'s prefill share from its start: pinned to its cores on CPU,
        its SM percentage on a GPU."""
        start = self.partition.worker_start(split)
        link = PrefillLink(self._server_args, self._semipd_storage, start.threads, self._mailboxes,
                           depth=int(os.environ.get(ENV_PIPELINE, PIPELINE_DEPTH)),
                           hung_after_s=float(os.environ.get(ENV_PREFILL_TIMEOUT, HUNG_AFTER_S)), env=dict(start.env))
        if start.cores:
            pin_process(link.pid, list(start.cores))
        return link

    @property
    def unified(self) -> bool:
        return self.split is not None and self.is_unified(self.split)

    def is_unified(self, split: Split) -> bool:
        return split.prefill == split.decode == self.partition.units

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
        timer = self.timer
        while not self.gracefully_exit:
            timer.start_iteration()
            with timer.phase("intake"):
                self.ingest_requests()
                self.control.serve_pending(self.handle_control)
                self._watch_worker()
                self._watch_restart()
                self._watch_standby()
                self._watch_moves()
            if self.unified:
                self._unified_iteration()
            else:
                self._split_iteration()
            timer.end_iteration()

    def _unified_iteration(self) -> None:
        """SGLang's own loop body: one prefill or decode batch on all cores."""
        timer = self.timer
        with timer.phase("formation"):
            plan = self.get_next_batch_to_run(self.running_batch, self.last_batch)
            self.running_batch = plan.running_batch
            batch = plan.batch_to_run
        self.cur_batch_for_debug = batch
        self.semipd_metrics.record_queues(len(self.waiting_queue), self.running_batch.batch_size())
        if batch is None:
            self._sched_idled = True
            self.on_idle()
            self._idle_wait()
        elif batch.forward_mode.is_extend():
            self._run_local_prefill(batch)
        else:
            self._run_decode(batch)
        self.last_batch = batch

    def _split_iteration(self) -> None:
        timer = self.timer
        try:
            while (finished := self.prefill_link.poll()) is not None:
                with timer.phase("prefill completion"):
                    self._complete_prefill(*finished)
        except WorkerDied as exc:
            self._worker_died(exc)
            return
        decode_batch = None
        with timer.phase("formation"):
            if self._swap_due:
                prefill = None  # a standby worker waits for this one to finish: nothing new for it
            elif self.prefill_link.busy:
                prefill = self._form_next_prefill()
            else:
                plan = self.get_next_batch_to_run(self.running_batch, None)
                self.running_batch = plan.running_batch
                prefill = plan.batch_to_run
                if prefill is not None and not prefill.forward_mode.is_extend():
                    decode_batch, prefill = prefill, None  # SGLang formed a decode batch: nothing to prefill
        if prefill is not None:
            if self.lend_idle_cores:  # decode is idle during this prefill iff nothing runs or is prefilled
                self.partition.lend("decode", False, self._workers)
                self.partition.lend("prefill", self.running_batch.is_empty() and not self.prefill_link.busy,
                                    self._workers)
            with timer.phase("prefill hand-off"):
                try:
                    self._launch_prefill(prefill)
                except WorkerDied as exc:
                    self._worker_died(exc)
                    return
        if decode_batch is None:
            with timer.phase("formation"):
                decode_batch = self._next_decode_batch()
        self.semipd_metrics.record_queues(len(self.waiting_queue), self.running_batch.batch_size())

        # SGLang's watchdog counts a loop with a current batch and no new step as hung: the
        # batch must be None whenever this loop runs no step, or an idle server is killed.
        self.cur_batch_for_debug = decode_batch
        if decode_batch is not None:
            if self.lend_idle_cores:  # no prefill can start before this decode step ends
                self.partition.lend("decode", not self.prefill_link.busy, self._workers)
            self._run_decode(decode_batch)
            self.last_batch = decode_batch
        elif self.prefill_link.busy:
            with timer.phase("waiting"):
                self.prefill_link.poll_wait(1)  # until the prefill finishes or 1 ms passes
        else:
            self.last_batch = None
            self._sched_idled = True
            self.on_idle()
            self._idle_wait()

    def _idle_wait(self) -> None:
        """Nothing runs and nothing is prefilled: sleep until a request, an admin command or the
        worker has something to say (or IDLE_WAIT_MS passes, for a worker starting), rather than
        nap 1 ms at a time: that spun 30-40% of a core an idle engine's neighbours need."""
        poller = zmq.Poller()
        for sock in (self.ipc_channels.recv_from_tokenizer, self.ipc_channels.recv_from_rpc,
                     self.control.sock, self.prefill_link.sock):
            if sock is not None:
                poller.register(sock, zmq.POLLIN)
        with self.timer.phase("waiting"):
            poller.poll(IDLE_WAIT_MS)

    def _run_decode(self, batch) -> None:
        context = sum(len(r.origin_input_ids) + len(r.output_ids) for r in batch.reqs)
        self._run_here(batch, "decode", "decode forward", batch.batch_size(), context)

    def _run_local_prefill(self, batch) -> None:
        """A prefill batch run here, on the owner's cores (unified mode, or a worker that died)."""
        self._run_here(batch, "prefill", "prefill forward (local)", int(batch.extend_num_tokens or 0),
                       sum(batch.prefix_lens or ()))

    def _run_here(self, batch, worker: str, forward_phase: str, tokens: int, context: int) -> None:
        """SGLang's run_batch and process_batch_result on the owner's cores, timed and recorded."""
        started = time.time()
        with self.timer.phase(forward_phase):
            result = self.run_batch(batch)
        finished = time.time()
        with self.timer.phase(f"{worker} completion"):
            self.process_batch_result(batch, result)
        self._record_step(worker, started, finished, batch.batch_size(), tokens, context,
                          self.partition.cores_of("decode"))

    def _form_next_prefill(self):
        """The batch after the one the worker runs, formed now so that the worker starts it as
        soon as it is free. SGLang's admission counts the running batch's requests (their number
        and the KV their decoding will take): the worker's are added, as they join it next. Not
        while a request is being prefilled in chunks: SGLang forms its next chunk only once the
        previous one is complete. Nor while the worker runs on lent cores: its requests decode as
        soon as it finishes, so the next batch could not keep those cores."""
        if not (self.prefill_link.has_room and self.waiting_queue) or self.chunked_req is not None \
                or self.is_mixed_chunk or (self.lend_idle_cores and self.partition.lent.get("prefill", False)):
            return None
        running = self.running_batch
        own = running.reqs
        running.reqs = own + self.prefill_link.inflight_reqs()
        try:
            return self.get_new_batch_prefill(running).batch_to_run
        finally:
            running.reqs = own

    def _merge_prefilled(self, batch) -> None:
        """A completed prefill joins the running batch (what SGLang's get_next_batch_to_run does
        with its last batch): finished requests and a request still being chunked stay out."""
        size = batch.batch_size()
        batch.filter_batch(reqs_to_exclude=self.chunked_req)
        if batch.is_empty():
            return
        if self.running_batch.is_empty():
            self.running_batch = batch
        else:
            self.running_batch.merge_batch(batch)
        if batch.batch_size() < size:
            self.running_batch.batch_is_full = False

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
        self.prefill_link.launch(batch, forward_batch, queued_since(batch.reqs))
        self._prefill_cores = self.partition.cores_of("prefill")

    def _complete_prefill(self, batch, forward_batch, result) -> None:
        self._semipd_injected = ModelRunnerOutput(logits_output=result.logits_output, can_run_graph=False)
        run_result = self.run_batch(batch)
        self.process_batch_result(batch, run_result)
        self._merge_prefilled(batch)
        self._record_step("prefill", result.started, result.finished, batch.batch_size(),
                          int(batch.extend_num_tokens or 0), sum(batch.prefix_lens or ()), self._prefill_cores)

    def _finish_inflight_prefill(self, timeout_s: float = 600.0) -> None:
        """Wait for the worker's batches (a batch boundary) and complete them."""
        deadline = time.monotonic() + timeout_s
        while self.prefill_link.busy and time.monotonic() < deadline:
            try:
                finished = self.prefill_link.poll(timeout_ms=50)
            except WorkerDied as exc:
                self._rerun_locally(exc)
                break
            if finished is not None:
                self._complete_prefill(*finished)

    # -- a prefill worker that dies ------------------------------------------------------------
    def _rerun_locally(self, exc: WorkerDied) -> None:
        """Prefill the batches the dead worker held here: their KV slots are ours, so the requests
        finish exactly as they would have (what the worker half-wrote is overwritten)."""
        self.prefill_link.clear()
        logger.error("%s; its %d batch(es) of %s requests are prefilled by the owner", exc, len(exc.inflight),
                     "+".join(str(held.batch.batch_size()) for held in exc.inflight))
        for held in exc.inflight:
            self._run_local_prefill(held.batch)
            self._merge_prefilled(held.batch)

    def _watch_worker(self) -> None:
        """A worker that died while it held nothing is noticed here, not at its next batch."""
        link = self.prefill_link
        if self.resume_split is None and link.ready and not link.busy and not link.process.is_alive():
            self._worker_died(WorkerDied(f"the prefill worker exited (code {link.process.exitcode}) while idle", []))

    def _worker_died(self, exc: WorkerDied) -> None:
        self._rerun_locally(exc)
        if self.streams is not None:
            self.streams.worker_replaced()
        # the restart replaces a standby (or a move in flight); the split asked for follows
        pending = self.standby[1] if self.standby else self._queued
        self.queued_split = None
        self._cancel_standby()
        in_force, units = self.split, self.partition.units
        self.prefill_link.stop()
        self.prefill_link = self._start_worker(Split(units, units))
        self.semipd_metrics.record_worker_death(exc.cause)
        self.apply_split(Split(units, units), who=f"prefill worker died ({exc}); unified until a new one is ready",
                         event="prefill worker died")
        self.resume_split = pending or in_force

    def _watch_restart(self) -> None:
        if self.resume_split is None:
            return
        try:
            ready = self.prefill_link.poll_ready()
        except RuntimeError as exc:
            logger.error("a new prefill worker failed to start: %s; trying again", exc)
            self.prefill_link.stop()
            self.prefill_link = self._start_worker(Split(self.partition.units, self.partition.units))
            return
        if ready:
            split, self.resume_split = self.resume_split, None
            self.worker_split = Split(self.partition.units, self.partition.units)  # what it was started on
            if self._needs_standby(split):  # its share is fixed at its start (MPS, --repartition standby)
                self._start_standby(split, "a new prefill worker is ready")
                return
            self.worker_split = split  # (moved to its share now: it has served nothing yet)
            self.apply_split(split, who="a new prefill worker is ready", event="prefill worker replaced")

    # -- a standby worker (--repartition standby) ---------------------------------------------
    def _prefill_share(self, split: Split) -> WorkerStart:
        return self.partition.worker_start(split)

    def _needs_standby(self, split: Split) -> bool:
        """Standby mode: a split whose prefill share is not the active worker's needs a new worker
        (unified mode needs none: the worker stands by)."""
        return self.swap_standby and not self.is_unified(split) \
            and self._prefill_share(split) != self._prefill_share(self.worker_split)

    def _start_standby(self, split: Split, who: str) -> None:
        """A worker on `split`'s prefill share, started now and swapped in once ready (one already
        starting on that share is kept: a tuner asks again every tick while it starts)."""
        if self.standby is not None and self._prefill_share(self.standby[1]) == self._prefill_share(split):
            self.standby = (self.standby[0], split, who)
            return
        self._cancel_standby()
        self.standby = (self._start_worker(split), split, who)

    def _cancel_standby(self) -> None:
        if self.standby is not None:
            self.standby[0].stop()
        self.standby, self._swap_due = None, False

    def _watch_standby(self) -> None:
        if self.standby is None:
            return
        link, split, who = self.standby
        try:
            ready = link.poll_ready()
        except RuntimeError as exc:
            logger.error("the standby prefill worker for split %s failed to start: %s; split %s stays",
                         split, exc, self.split)
            self._cancel_standby()
            self.standby_error = f"split {split}: {exc}"
            return
        if not ready:
            return
        if self.prefill_link.busy:
            self._swap_due = True  # the active worker finishes what it holds first
            return
        old, self.prefill_link = self.prefill_link, link
        self.standby, self._swap_due = None, False
        old.stop()
        self.swaps += 1
        self.worker_split = split
        self.apply_split(split, who=f"{who} (standby worker swapped in)")

    # -- green-context moves ------------------------------------------------------------------
    @property
    def _queued(self) -> Split | None:
        return self.queued_split[0] if self.queued_split else None

    def _watch_moves(self) -> None:
        """Decode takes its new share once the worker has given up its old one; a split asked
        for meanwhile is applied then."""
        if self.streams is None:
            return
        for split in self.prefill_link.take_moves():
            self.streams.worker_moved(split)
        if self.queued_split is not None and not self.streams.moving:
            (split, who), self.queued_split = self.queued_split, None
            self.apply_split(split, who=who)

    # -- the split -----------------------------------------------------------------------------
    def _set_threads(self, role: str, threads: int) -> None:
        if role == "decode":
            torch.set_num_threads(threads)
        elif self.prefill_link.ready:
            self.prefill_link.set_threads(threads)

    def apply_split(self, split: Split, who: str, event: str | None = None) -> dict:
        started = time.perf_counter()
        was_unified = self.unified
        handed_over = 0  # the worker's batches completed at this switch (the pipeline holds up to two)
        if self.is_unified(split) and not was_unified:
            handed_over = len(self.prefill_link.inflight)
            self._finish_inflight_prefill()  # SGLang's loop takes over at this batch boundary
            self.last_batch = None  # merged already: SGLang's formation must not merge it again
        elif was_unified and not self.is_unified(split):
            last, self.last_batch = self.last_batch, None  # a prefill SGLang's loop ran last joins now
            if last is not None and last.forward_mode.is_extend():
                self._merge_prefilled(last)
            self.prefill_link.idle_since = time.time()  # it stood by: that was not waiting with work
        in_force = self.partition.apply(split, self._workers)
        record = log_split(self.split_history, self.semipd_metrics, self.split, split, who,
                           time.perf_counter() - started, unified=self.is_unified(split),
                           handed_over=handed_over, **in_force, **({"event": event} if event else {}))
        self.split = split
        return record

    def handle_control(self, request: dict) -> dict:
        op = request.get("op")
        if op == "get_split":
            return {"ok": True, **self.split_state()}
        if op == "set_split":
            try:
                split = requested_split(request, self.partition)
            except InvalidSplit as exc:
                return {"ok": False, "status": 400, "error": str(exc)}
            who = str(request.get("who") or "admin")
            if self.resume_split is not None:
                self.resume_split = split  # applied once the new prefill worker is ready
                return {"ok": True, "applied": None, **self.split_state()}
            if self._needs_standby(split):
                self._start_standby(split, who)
                return {"ok": True, "applied": None, **self.split_state()}
            if self.streams is not None and self.streams.moving:
                self.queued_split = (split, who)  # applied once the worker has made the move in flight
                return {"ok": True, "applied": None, **self.split_state()}
            self._cancel_standby()  # this split needs the active worker's share: it applies now
            record = self.apply_split(split, who=who)
            return {"ok": True, "applied": record, **self.split_state()}
        if op == "steps":
            since = float(request.get("since") or 0)
            return {"ok": True, "steps": [s for s in self.steps if s["end"] >= since],
                    "loop": self.timer.breakdown(since)}
        if op == "workers":
            return {"ok": True, "pids": self._workers.pids(), "storage": str(self._semipd_storage.directory),
                    "link": dict(self.prefill_link.stats), "restarting": self.resume_split is not None,
                    "repartition": "standby" if self.swap_standby else "live", "swaps": self.swaps,
                    "standby": str(self.standby[1]) if self.standby else None, "standby_error": self.standby_error}
        return {"ok": False, "status": 400, "error": f"unknown op {op!r}"}

    def split_state(self) -> dict:
        # applied once a worker is ready, or the move in flight is made
        pending = self.standby[1] if self.standby else self.resume_split or self._queued
        return split_state(self.split.prefill, self.split.decode, backend=self.partition.name,
                           unit=self.partition.unit, units=self.partition.units,
                           valid=self.partition.valid_range(), history=list(self.split_history),
                           lend_idle_cores=self.lend_idle_cores, pending=str(pending) if pending else None,
                           **({"menu": [list(pair) for pair in self.partition.menu()]}
                              if hasattr(self.partition, "menu") else {}))

    def _record_step(self, worker: str, started: float, finished: float, batch_size: int, tokens: int,
                     context: int, cores: list[int]):
        # context: tokens already in the KV cache that this step attends to (decode: every
        # sequence's length; prefill: the cached prefixes), for fitting step-time models.
        self.steps.append({"worker": worker, "start": started, "end": finished, "batch_size": batch_size,
                           "tokens": tokens, "context": context, "cores": cores})
        self.semipd_metrics.record_step(worker, finished - started, batch_size)


def gpu_partition(name: str | None):
    """The two-process engine's GPU partition: MPS (decode keeps every SM, prefill's percentage is
    set at its start; the paper's) or green contexts (SM counts, moved live)."""
    return GreenContexts.for_device() if name == "green-contexts" else MpsPrefillShare()


def queued_since(reqs) -> float:
    """Wall time the longest-waiting of these requests entered the waiting queue (SGLang keeps
    it on the perf_counter clock)."""
    entered = [r.time_stats.wait_queue_entry_time for r in reqs if r.time_stats.wait_queue_entry_time]
    now_perf, now_wall = time.perf_counter(), time.time()
    return now_wall - (now_perf - min(entered)) if entered else now_wall


def frontend_pids() -> list[int]:
    """SGLang's HTTP + tokenizer process (the launcher, this process's parent) and its
    detokenizer (a sibling)."""
    import psutil

    launcher = psutil.Process(os.getppid())
    detokenizers = [p.pid for p in launcher.children() if "detokenizer" in " ".join(p.cmdline() or [p.name()])]
    return [launcher.pid, *detokenizers]
