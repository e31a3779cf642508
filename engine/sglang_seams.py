"""Every point where semipd attaches to SGLang, in one place, checked against the pinned release.

semipd extends SGLang 0.5.23 without editing or copying its files, through these seams:

| seam                | what we do there                                         | used by |
|---------------------|----------------------------------------------------------|---------|
| launch              | pass a launch callback and our scheduler-process entry   | engine/launch.py |
| scheduler class     | SGLang's scheduler process builds our Scheduler subclass | engine/semipd/settings.py |
| scheduler loop      | the subclass replaces `event_loop_normal` and calls SGLang's own batch methods | engine/semipd/owner.py |
| forward injection   | `model_runner.forward` returns the prefill worker's logits once | engine/semipd/owner.py |
| pool allocations    | large `torch.zeros` in the pool constructors become shared tensors (files, or IPC) | engine/semipd/shared_storage.py |
| scheduler process   | the prefill worker configures a scheduler process and builds a Scheduler | engine/semipd/prefill_worker.py |
| worker build        | (IPC storage) the worker loads dummy weights and takes the owner's pool sizes | engine/semipd/prefill_worker.py |
| row-parallel hooks  | AROUND hooks (SGLang's HookRegistry) on RowParallelLinear and the TP all-reduce | engine/tensor_overlap/sglang_patch.py |
| HTTP app            | routes and a middleware on SGLang's FastAPI app, SGLang's admin auth | engine/http_routes.py |
| attention backend   | `semipd_cpu` in SGLang's attention registry and `--attention-backend` choices; a TorchNativeAttnBackend subclass | engine/attention/backend.py |
| pdmux               | GPU semi-pd: the subclass builds pdmux's stream groups from our SM menu and picks the group of the split in force | engine/semipd/pdmux_owner.py |

`check_seams()` runs at the start of `semipd serve`: a release other than the pinned one is named
in a warning, and a seam whose target is gone or has lost a parameter we pass is an error naming
the seam, its target and what changed, before anything starts. Importing this module loads
neither torch nor sglang; each seam imports what it touches when used.
"""

from __future__ import annotations

import importlib
import inspect
from contextlib import contextmanager
from dataclasses import dataclass

PINNED = "0.5.23"


class SeamChanged(RuntimeError):
    pass


@dataclass(frozen=True)
class Seam:
    name: str
    target: str                    # dotted path of the module attribute we attach to
    params: tuple[str, ...] = ()   # parameters of that callable we rely on


SEAMS = (
    Seam("launch", "sglang.srt.entrypoints.http_server.launch_server",
         ("server_args", "launch_callback", "run_scheduler_process_func")),
    Seam("scheduler class", "sglang.srt.managers.scheduler.Scheduler", ("server_args", "port_args")),
    Seam("scheduler process", "sglang.srt.managers.scheduler.run_scheduler_process"),
    Seam("scheduler process", "sglang.srt.managers.scheduler.configure_scheduler_process"),
    Seam("scheduler loop", "sglang.srt.managers.scheduler.Scheduler.event_loop_normal"),
    Seam("scheduler loop", "sglang.srt.managers.scheduler.Scheduler.get_next_batch_to_run"),
    Seam("scheduler loop", "sglang.srt.managers.scheduler.Scheduler.update_running_batch"),
    Seam("scheduler loop", "sglang.srt.managers.scheduler.Scheduler.run_batch"),
    Seam("scheduler loop", "sglang.srt.managers.scheduler.Scheduler.process_batch_result"),
    Seam("scheduler loop", "sglang.srt.managers.scheduler.Scheduler.init_memory_pools"),
    Seam("forward injection", "sglang.srt.model_executor.model_runner.ModelRunner.forward",
         ("forward_batch",)),
    Seam("forward injection", "sglang.srt.model_executor.model_runner.ModelRunnerOutput",
         ("logits_output", "can_run_graph")),
    Seam("forward injection", "sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new"),
    Seam("worker build", "sglang.srt.runtime_context.get_model"),
    Seam("worker build", "sglang.srt.managers.tp_worker.TpModelWorker.init_cuda_graphs", ("capture_decode_cuda_graph",)),
    Seam("worker build", "sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator._resolve_memory_pool_config",
         ("pre_model_load_memory",)),
    Seam("row-parallel hooks", "sglang.srt.plugins.hook_registry.HookRegistry.register"),
    Seam("row-parallel hooks", "sglang.srt.layers.linear.RowParallelLinear.forward",
         ("input_", "skip_all_reduce", "forward_batch", "output_tensor")),
    Seam("row-parallel hooks", "sglang.srt.distributed.parallel_state.GroupCoordinator.all_reduce"),
    Seam("HTTP app", "sglang.srt.entrypoints.http_server.app"),
    Seam("HTTP app", "sglang.srt.utils.auth.auth_level"),
    Seam("attention backend", "sglang.srt.layers.attention.attention_registry.register_attention_backend", ("name",)),
    Seam("attention backend", "sglang.srt.layers.attention.attention_registry.ATTENTION_BACKENDS"),
    Seam("attention backend", "sglang.srt.arg_groups.choices.add_attention_backend_choices"),
    Seam("attention backend", "sglang.srt.arg_groups.choices.ATTENTION_BACKEND_CHOICES"),
    Seam("attention backend", "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.forward_decode",
         ("q", "k", "v", "layer", "forward_batch", "save_kv_cache")),
    Seam("attention backend",
         "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend._run_sdpa_forward_decode"),
    Seam("attention backend", "sglang.srt.mem_cache.memory_pool.KVWriteLoc"),
    # GPU semi-pd: SGLang's PD multiplexing with our stream groups and our choice among them
    Seam("pdmux", "sglang.srt.managers.scheduler.Scheduler.init_pdmux"),
    Seam("pdmux", "sglang.srt.managers.scheduler.Scheduler.adjust_stream_groups", ("running_batch",)),
    Seam("pdmux", "sglang.srt.managers.scheduler.Scheduler.event_loop_pdmux"),
    Seam("pdmux", "sglang.srt.managers.scheduler.Scheduler.ingest_requests"),
    Seam("pdmux", "sglang.srt.multiplex.pdmux_context.initialize_stream_groups", ("gpu_id", "config")),
    Seam("pdmux", "sglang.srt.multiplex.pdmux_context.set_current_stream_idx", ("idx",)),
    Seam("pdmux", "sglang.srt.multiplex.pdmux_context.PDMuxConfig", ("sm_group_num", "manual_divisions")),
)


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sglang")
    except PackageNotFoundError:
        return "not installed"


def resolve(target: str):
    """The object at a dotted path: the longest importable module prefix, then attributes."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)  # AttributeError: the target is gone
        return obj
    raise ImportError(f"no module of {target!r} can be imported")


def seam_problem(seam: Seam) -> str | None:
    """What changed at this seam, or None when it is as we use it."""
    try:
        obj = resolve(seam.target)
    except (ImportError, AttributeError) as exc:
        return f"{seam.target} is gone ({exc})"
    if seam.params:
        try:
            found = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            return f"{seam.target} has no signature to check"
        missing = [p for p in seam.params if p not in found]
        if missing:
            return f"{seam.target} no longer takes {', '.join(missing)}"
    return None


def check_seams(seams=SEAMS) -> list[str]:
    """Warnings (another SGLang release whose seams still fit); SeamChanged names each broken seam."""
    problems = [f"seam '{s.name}': {p}" for s in seams if (p := seam_problem(s))]
    found = installed_version()
    if problems:
        raise SeamChanged(f"SGLang {found} does not fit semipd (built on {PINNED}):\n  " + "\n  ".join(problems))
    return [] if found == PINNED else [f"SGLang {found} is not the pinned {PINNED}; its seams fit, "
                                       "but behaviour between them is untested"]


# -- the seams -------------------------------------------------------------------------------------

def run_server_with(server_args, launch_callback, run_scheduler_process_func=None) -> None:
    """launch: SGLang's `run_server` takes no callback or scheduler entry; hand ours to the
    `launch_server` it calls."""
    import sglang.srt.entrypoints.http_server as http_server
    from sglang.launch_server import run_server

    original = http_server.launch_server

    def launch_with_hooks(server_args, *a, **kw):
        kw.setdefault("launch_callback", launch_callback)
        if run_scheduler_process_func is not None:
            kw.setdefault("run_scheduler_process_func", run_scheduler_process_func)
        return original(server_args, *a, **kw)

    http_server.launch_server = launch_with_hooks
    try:
        run_server(server_args)
    finally:
        http_server.launch_server = original


def run_scheduler_process_as(scheduler_cls, *args, **kwargs):
    """scheduler class: SGLang's scheduler-process entry, building `scheduler_cls` instead of its
    Scheduler (the entry looks the class up in its module when it runs)."""
    import sglang.srt.managers.scheduler as scheduler_module

    scheduler_module.Scheduler = scheduler_cls
    return scheduler_module.run_scheduler_process(*args, **kwargs)


def inject_forward(model_runner, take_injected) -> None:
    """forward injection: `model_runner.forward` returns `take_injected()` when it is not None (a
    ModelRunnerOutput computed elsewhere), so SGLang's own run_batch completes that batch."""
    local_forward = model_runner.forward

    def forward(forward_batch, *args, **kwargs):
        injected = take_injected()
        return injected if injected is not None else local_forward(forward_batch, *args, **kwargs)

    model_runner.forward = forward


@contextmanager
def worker_build(pool_config):
    """worker build: within this block, a model loads SGLang's `dummy` weights (the worker rebinds
    them to the owner's; nothing is read from disk), the memory pools take `pool_config`, the
    owner's, instead of profiling device memory the owner already holds, and no decode graphs are
    captured (the worker only prefills)."""
    import copy

    from sglang.srt.managers.tp_worker import TpModelWorker
    from sglang.srt.mem_cache.kv_cache_configurator import KVCacheConfigurator
    from sglang.srt.runtime_context import get_model

    resolve_config, init_graphs = KVCacheConfigurator._resolve_memory_pool_config, TpModelWorker.init_cuda_graphs
    KVCacheConfigurator._resolve_memory_pool_config = lambda self, pre_model_load_memory: copy.deepcopy(pool_config)
    TpModelWorker.init_cuda_graphs = lambda self, capture_decode_cuda_graph=True: init_graphs(self, False)
    try:
        with get_model().override(load_format="dummy"):
            yield
    finally:
        KVCacheConfigurator._resolve_memory_pool_config, TpModelWorker.init_cuda_graphs = resolve_config, init_graphs


@contextmanager
def routed_zeros(route):
    """pool allocations: within this block `torch.zeros(shape, dtype=..., device=...)` calls
    `route(shape, dtype, device)` first; a tensor it returns replaces the allocation, None keeps
    torch's own. SGLang's pool constructors allocate their buffers this way."""
    import torch

    real_zeros = torch.zeros

    def zeros(*size, dtype=None, device=None, **kwargs):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        routed = None if kwargs else route(shape, dtype or torch.get_default_dtype(), device)
        return routed if routed is not None else real_zeros(*size, dtype=dtype, device=device, **kwargs)

    torch.zeros = zeros
    try:
        yield
    finally:
        torch.zeros = real_zeros


def register_around_hooks(hooks: dict) -> None:
    """row-parallel hooks: AROUND hooks by dotted target, through SGLang's own HookRegistry."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for target, hook in hooks.items():
        HookRegistry.register(target, hook, HookType.AROUND)
    HookRegistry.apply_hooks()


def http_app():
    """HTTP app: SGLang's FastAPI app, to which routes and middleware are added before launch."""
    from sglang.srt.entrypoints.http_server import app

    return app


def admin_optional(handler):
    """HTTP app: SGLang's own auth level for admin routes (needs --admin-api-key when one is set)."""
    from sglang.srt.utils.auth import AuthLevel, auth_level

    return auth_level(AuthLevel.ADMIN_OPTIONAL)(handler)


def register_attention_backend(name: str, factory) -> None:
    """attention backend: `--attention-backend NAME` accepted by SGLang's flags and built by
    `factory(model_runner)` (idempotent; the registry is per process)."""
    from sglang.srt.arg_groups.choices import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.layers.attention.attention_registry import register_attention_backend as register

    if name not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([name])
    if ATTENTION_BACKENDS.get(name) is not factory:
        register(name)(factory)
