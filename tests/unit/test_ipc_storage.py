"""The IPC storage (engine/semipd/ipc_storage.py) between two real processes on CPU: the owner's
pools and weights opened in place by a worker that built its own with other values, in order,
checked by name, shape and dtype. On CUDA the same code carries cudaIpcMemHandles; no GPU here."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
import torch

from engine.semipd.ipc_storage import MANIFEST_FILE, IpcStorage, attach_storage, new_storage
from engine.semipd.shared_storage import SHARE_THRESHOLD_BYTES, SharedStorage, StorageMismatch

BIG = SHARE_THRESHOLD_BYTES // 4  # float32 elements of one shared allocation


def build_pools(storage, rows: int = 4) -> list[torch.Tensor]:
    """What SGLang's pool constructors do: large zeros (shared) and a small one (private)."""
    with storage.shared_allocations("pool"):
        return [torch.zeros((rows, BIG), dtype=torch.float32), torch.zeros(8, dtype=torch.int64),
                torch.zeros((2, BIG), dtype=torch.bfloat16)]


def owner(tmp_path: Path) -> tuple[IpcStorage, list[torch.Tensor], torch.nn.Module]:
    storage = IpcStorage.new(f"test-{tmp_path.name}", "cpu")
    pools = build_pools(storage)
    model = torch.nn.Linear(4, 3)
    storage.share_parameters(model)
    storage.publish(pool_config={"max_total_num_tokens": 1234})
    return storage, pools, model


def worker(directory: str, rows: int, results) -> None:
    try:
        storage = attach_storage(directory)
        pools = build_pools(storage, rows)
        model = torch.nn.Linear(4, 3)  # other (random) values: the owner's replace them
        storage.share_parameters(model)
        storage.check_complete()
        pools[0][1, :3] = torch.tensor([1.0, 2.0, 3.0])  # a KV write by the worker
        results.put(("ok", storage.pool_config, model.weight.detach().clone()))
    except StorageMismatch as error:
        results.put(("mismatch", str(error)))


def run_worker(directory, rows: int = 4):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=worker, args=(str(directory), rows, results))
    process.start()
    found = results.get(timeout=120)
    process.join(timeout=30)
    return found


def test_a_worker_opens_the_owners_pools_and_weights_in_place(tmp_path):
    storage, pools, model = owner(tmp_path)
    try:
        status, pool_config, weight = run_worker(storage.directory)
        assert status == "ok"
        assert pool_config == {"max_total_num_tokens": 1234}  # the owner's sizes, not profiled again
        assert torch.equal(weight, model.weight.detach())  # the worker's own values were replaced
        assert pools[0][1, :3].tolist() == [1.0, 2.0, 3.0] and float(pools[0][0].abs().sum()) == 0
        assert storage.names == ["pool.0", "pool.1", "param.weight", "param.bias"]  # the small zeros stay private
    finally:
        storage.remove()
    assert not storage.directory.exists()


def test_a_worker_that_builds_other_shapes_is_refused_naming_the_tensor(tmp_path):
    storage, _, _ = owner(tmp_path)
    try:
        status, message = run_worker(storage.directory, rows=5)
        assert status == "mismatch"
        assert "shared tensor 0: the owner made ('pool.0', (4, 16384), 'torch.float32')" in message
        assert "(5, 16384)" in message
    finally:
        storage.remove()


def test_the_manifest_is_written_once_and_a_worker_must_open_all_of_it(tmp_path):
    storage, _, _ = owner(tmp_path)
    try:
        written = (storage.directory / MANIFEST_FILE).stat().st_mtime_ns
        storage.publish(pool_config=None)  # a restart or standby worker reads the same manifest
        assert (storage.directory / MANIFEST_FILE).stat().st_mtime_ns == written
        attached = attach_storage(storage.directory)
        assert isinstance(attached, IpcStorage)
        attached.tensor("pool.0", (4, BIG), torch.float32)
        with pytest.raises(StorageMismatch, match="the owner shares 4 tensors, this worker wants 1: the owner made more"):
            attached.check_complete()
        for name, shape, dtype in (("pool.1", (2, BIG), torch.bfloat16), ("param.weight", (3, 4), torch.float32),
                                   ("param.bias", (3,), torch.float32)):
            attached.tensor(name, shape, dtype)
        with pytest.raises(StorageMismatch, match="this worker wants 5: the owner made fewer"):
            attached.tensor("pool.2", (1,), torch.float32)
    finally:
        storage.remove()


def test_file_storage_is_attached_as_files_and_bad_kinds_are_refused(tmp_path):
    files = SharedStorage.new(f"test-{tmp_path.name}")
    try:
        assert isinstance(attach_storage(files.directory), SharedStorage)
    finally:
        files.remove()
    with pytest.raises(ValueError, match="valid are ipc, and files on CPU"):
        new_storage("files", "cuda")
    with pytest.raises(ValueError, match="'nfs'"):
        new_storage("nfs", "cpu")


def test_serve_refuses_a_bad_storage():
    from engine.semipd import settings

    with pytest.raises(ValueError, match="--storage 'nfs': valid are files, ipc"):
        settings.configure("1,1", 30000, storage="nfs")


@pytest.fixture
def settings_env(monkeypatch):
    """configure() exports its settings: restored after the test."""
    from engine.semipd import settings

    for name in dir(settings):
        if name.startswith("ENV_"):
            monkeypatch.delenv(getattr(settings, name), raising=False)
    return settings


def test_ipc_storage_on_a_gpu_is_the_two_processes_under_mps(settings_env, monkeypatch):
    import engine.partition.mps as mps
    from engine.partition import InvalidSplit

    settings = settings_env
    with pytest.raises(ValueError, match="partitions it with MPS: .*nvidia-cuda-mps-control"):
        settings.configure(None, 30000, device="cuda", storage="ipc")  # no MPS daemon on this machine
    monkeypatch.setattr(mps, "check_mps_daemon", lambda: None)
    with pytest.raises(InvalidSplit, match="decode share 80"):
        settings.configure("50,80", 30000, device="cuda", storage="ipc")
    with pytest.raises(ValueError, match="--lend-idle-cores: CPU only"):
        settings.configure(None, 30000, lend_idle_cores=True, device="cuda", storage="ipc")
    settings.configure(None, 30000, device="cuda", storage="ipc")
    assert os.environ[settings.ENV_SPLIT] == "50,100" and os.environ[settings.ENV_REPARTITION] == "standby"
    assert settings.semipd_scheduler_class().__name__ == "SemiPDScheduler"  # not pdmux's
    monkeypatch.setenv(settings.ENV_STORAGE, "files")
    assert settings.semipd_scheduler_class().__name__ == "PdmuxSemiPDScheduler"


def test_what_cuda_ipc_cannot_share_is_refused_by_name_before_start(monkeypatch):
    from engine.semipd.settings import two_process_argv

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    assert two_process_argv(["--tp-size", "1"], "cuda") == ["--tp-size", "1", "--disable-overlap-schedule"]
    with pytest.raises(ValueError, match="--enable-memory-saver: .*; --enable-symm-mem"):
        two_process_argv(["--enable-memory-saver", "--enable-symm-mem"], "cuda")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    with pytest.raises(ValueError, match="expandable_segments"):
        two_process_argv([], "cuda")
    assert two_process_argv(["--enable-memory-saver"], "cpu")[-1] == "--disable-overlap-schedule"  # CPU: files or shm


def test_green_contexts_on_a_gpu_need_no_mps_daemon_move_live_and_run_decode_without_graphs(settings_env,
                                                                                            monkeypatch):
    from engine.partition import InvalidSplit
    from engine.semipd.settings import two_process_argv

    settings = settings_env
    monkeypatch.delenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", raising=False)
    with pytest.raises(ValueError, match="--gpu-partition 'sms': valid are mps, green-contexts"):
        settings.configure(None, 30000, device="cuda", storage="ipc", gpu_partition="sms")
    for device, storage in (("cpu", "ipc"), ("cuda", "files")):
        with pytest.raises(ValueError, match="--gpu-partition green-contexts: the two-process engine's on a GPU"):
            settings.configure(None, 30000, device=device, storage=storage, gpu_partition="green-contexts")
    with pytest.raises(ValueError, match="--repartition standby: green contexts move both workers live"):
        settings.configure(None, 30000, device="cuda", storage="ipc", gpu_partition="green-contexts",
                           repartition="standby")
    with pytest.raises(InvalidSplit, match="not two integers"):
        settings.configure("half", 30000, device="cuda", storage="ipc", gpu_partition="green-contexts")
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "40")
    with pytest.raises(ValueError, match="CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=40 overrides green-context"):
        settings.configure(None, 30000, device="cuda", storage="ipc", gpu_partition="green-contexts")
    monkeypatch.delenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
    settings.configure(None, 30000, device="cuda", storage="ipc", gpu_partition="green-contexts")  # no MPS daemon here
    assert os.environ[settings.ENV_SPLIT] == "" and os.environ[settings.ENV_REPARTITION] == "live"
    assert os.environ[settings.ENV_GPU_PARTITION] == "green-contexts"
    assert settings.semipd_scheduler_class().__name__ == "SemiPDScheduler"

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    with pytest.raises(ValueError, match="green-contexts .* add --disable-cuda-graph"):
        two_process_argv([], "cuda", "green-contexts")
    assert two_process_argv(["--disable-cuda-graph"], "cuda", "green-contexts")[0] == "--disable-cuda-graph"
