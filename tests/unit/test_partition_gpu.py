"""GPU partition backends (mps, green_contexts) against fakes: no GPU, no CUDA calls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.partition import InvalidSplit, Split, Workers
from engine.partition.green_contexts import (GreenContexts, SmGranularity, sm_granularity,
                                             torch_green_stream_factory)
from engine.partition.mps import MpsPercent, check_mps_daemon, mps_environment

REPO = Path(__file__).resolve().parents[2]


def fake_workers(calls: list, *, replace: bool = True, stream: bool = True) -> Workers:
    return Workers(
        pids=lambda: {"prefill": 1, "decode": 2},
        set_threads=lambda role, n: calls.append(("set_threads", role, n)),
        replace_worker=(lambda role, env: calls.append(("replace", role, env))) if replace else None,
        use_stream=(lambda role, s: calls.append(("stream", role, s))) if stream else None,
    )


class FakeFactory:
    """Stands in for green-context creation: returns a distinct token per call and counts calls."""

    def __init__(self):
        self.created: list[int] = []

    def __call__(self, sms: int) -> tuple[str, int, int]:
        self.created.append(sms)
        return ("stream", sms, len(self.created))


# --- mps -------------------------------------------------------------------------------------------

def test_mps_environment():
    assert mps_environment(60) == {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "60"}


@pytest.mark.parametrize("split", [Split(0, 50), Split(50, 101), Split(-5, 5), Split(True, 50)])
def test_mps_rejects_out_of_range_naming_range_and_keeps_split(split):
    backend = MpsPercent()
    calls: list = []
    backend.apply(Split(60, 40), fake_workers(calls))
    calls.clear()
    with pytest.raises(InvalidSplit, match="from 1 to 100"):
        backend.apply(split, fake_workers(calls))
    assert calls == []
    assert backend.in_force == {"prefill": 60, "decode": 40}


def test_mps_allows_overlap():
    backend = MpsPercent()
    backend.check(Split(100, 100))  # the paper's 100,100: no error
    calls: list = []
    assert backend.apply(Split(100, 100), fake_workers(calls))["percent"] == {"prefill": 100, "decode": 100}


def test_mps_replaces_both_in_order_when_start_unknown():
    calls: list = []
    result = MpsPercent().apply(Split(60, 40), fake_workers(calls))
    assert calls == [("replace", "prefill", {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "60"}),
                     ("replace", "decode", {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "40"})]
    assert result == {"percent": {"prefill": 60, "decode": 40}, "replaced": ["prefill", "decode"]}


def test_mps_replaces_only_changed_roles():
    backend = MpsPercent(started_with=Split(80, 100))
    calls: list = []
    result = backend.apply(Split(80, 50), fake_workers(calls))
    assert calls == [("replace", "decode", {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50"})]
    assert result == {"percent": {"prefill": 80, "decode": 50}, "replaced": ["decode"]}

    calls.clear()
    result = backend.apply(Split(70, 50), fake_workers(calls))
    assert calls == [("replace", "prefill", {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "70"})]
    assert result["replaced"] == ["prefill"]

    calls.clear()
    assert backend.apply(Split(70, 50), fake_workers(calls))["replaced"] == []
    assert calls == []


def test_mps_refuses_without_replace_worker():
    backend = MpsPercent(started_with=Split(80, 100))
    calls: list = []
    with pytest.raises(RuntimeError, match="replace_worker"):
        backend.apply(Split(60, 40), fake_workers(calls, replace=False))
    assert backend.in_force == {"prefill": 80, "decode": 100}


def test_mps_failed_decode_swap_keeps_prefill_swap_recorded():
    backend = MpsPercent(started_with=Split(80, 100))

    def replace(role, env):
        if role == "decode":
            raise RuntimeError("standby worker failed to attach")

    workers = Workers(pids=dict, set_threads=lambda r, n: None, replace_worker=replace)
    with pytest.raises(RuntimeError, match="attach"):
        backend.apply(Split(60, 40), workers)
    assert backend.in_force == {"prefill": 60, "decode": 100}


def test_mps_started_with_is_checked():
    with pytest.raises(InvalidSplit, match="from 1 to 100"):
        MpsPercent(started_with=Split(0, 100))


class FakeRun:
    def __init__(self, returncode=0, stdout="", stderr="", raises=None):
        self.result = (returncode, stdout, stderr)
        self.raises = raises
        self.calls: list = []

    def __call__(self, args, **kwargs):
        self.calls.append((args, kwargs))
        if self.raises:
            raise self.raises
        return subprocess.CompletedProcess(args, *self.result)


@pytest.mark.parametrize("stdout", ["", "4321\n"])
def test_mps_daemon_answering(stdout):
    run = FakeRun(stdout=stdout)
    assert check_mps_daemon(run=run) is None
    args, kwargs = run.calls[0]
    assert args == ["nvidia-cuda-mps-control"]
    assert kwargs["input"].strip() == "get_server_list"


@pytest.mark.parametrize("run", [
    FakeRun(returncode=1, stderr="Cannot find MPS control daemon process"),
    FakeRun(returncode=0, stdout="Cannot find MPS control daemon process"),
])
def test_mps_daemon_missing(run):
    message = check_mps_daemon(run=run)
    assert message is not None
    assert "CUDA_MPS_ENABLE_PER_CTX_DEVICE_MULTIPROCESSOR_PARTITIONING=1" in message
    assert "nvidia-cuda-mps-control -d" in message
    assert "Cannot find MPS control daemon" in message


def test_mps_control_not_installed():
    message = check_mps_daemon(run=FakeRun(raises=FileNotFoundError("nvidia-cuda-mps-control")))
    assert message is not None and "not on PATH" in message and "nvidia-cuda-mps-control -d" in message


def test_mps_daemon_timeout():
    message = check_mps_daemon(run=FakeRun(raises=subprocess.TimeoutExpired("nvidia-cuda-mps-control", 10)))
    assert message is not None and "did not answer" in message


# --- green contexts --------------------------------------------------------------------------------

def hopper(factory=None) -> GreenContexts:
    return GreenContexts(device_sms=132, min_sms=8, step=8, factory=factory or FakeFactory())


def test_granularity_by_architecture():
    assert sm_granularity(9) == SmGranularity(8, 8) == sm_granularity(10)
    assert sm_granularity(8) == SmGranularity(4, 2)
    with pytest.raises(ValueError, match="7.0 or later"):
        sm_granularity(6)


@pytest.mark.parametrize("split", [Split(4, 64), Split(66, 66), Split(64, 136), Split(64, 0), Split(64, False)])
def test_green_rejects_invalid_naming_range_and_step_and_keeps_split(split):
    factory = FakeFactory()
    backend = hopper(factory)
    calls: list = []
    backend.apply(Split(64, 64), fake_workers(calls))
    calls.clear()
    created = list(factory.created)
    with pytest.raises(InvalidSplit, match="from 8 to 128 in steps of 8"):
        backend.apply(split, fake_workers(calls))
    assert calls == [] and factory.created == created
    assert backend.in_force == {"prefill": 64, "decode": 64}


def test_green_ampere_granularity():
    backend = GreenContexts(device_sms=108, min_sms=4, step=2, factory=FakeFactory())
    backend.check(Split(4, 106))
    backend.check(Split(108, 108))  # overlap allowed
    with pytest.raises(InvalidSplit, match="from 4 to 108 in steps of 2"):
        backend.check(Split(5, 100))
    with pytest.raises(InvalidSplit, match="from 4 to 108 in steps of 2"):
        backend.check(Split(2, 100))


def test_green_hands_each_role_its_stream_and_caches():
    factory = FakeFactory()
    backend = hopper(factory)
    calls: list = []
    result = backend.apply(Split(72, 56), fake_workers(calls))
    assert factory.created == [72, 56]
    assert calls == [("stream", "prefill", ("stream", 72, 1)), ("stream", "decode", ("stream", 56, 2))]
    assert result["sms"] == {"prefill": 72, "decode": 56}

    calls.clear()
    backend.apply(Split(72, 56), fake_workers(calls))  # same split again: no new stream
    assert factory.created == [72, 56]
    assert calls == [("stream", "prefill", ("stream", 72, 1)), ("stream", "decode", ("stream", 56, 2))]

    backend.apply(Split(64, 56), fake_workers(calls))  # only the new count is created
    assert factory.created == [72, 56, 64]
    backend.apply(Split(72, 56), fake_workers(calls))  # switching back reuses the cached stream
    assert factory.created == [72, 56, 64]
    assert calls[-2] == ("stream", "prefill", ("stream", 72, 1))


def test_green_roles_with_equal_counts_get_distinct_streams():
    factory = FakeFactory()
    calls: list = []
    hopper(factory).apply(Split(64, 64), fake_workers(calls))
    assert factory.created == [64, 64]
    assert calls[0][2] != calls[1][2]


def test_green_refuses_without_use_stream():
    factory = FakeFactory()
    backend = hopper(factory)
    with pytest.raises(RuntimeError, match="use_stream"):
        backend.apply(Split(64, 64), fake_workers([], stream=False))
    assert backend.in_force == {} and factory.created == []


def test_green_failing_factory_switches_nothing():
    def factory(sms):
        if sms == 56:
            raise RuntimeError("green context creation failed")
        return ("stream", sms)

    backend = hopper(factory)
    calls: list = []
    with pytest.raises(RuntimeError, match="creation failed"):
        backend.apply(Split(72, 56), fake_workers(calls))
    assert calls == [] and backend.in_force == {}


def test_green_rejects_bad_granularity():
    with pytest.raises(ValueError, match="granularity"):
        GreenContexts(device_sms=132, min_sms=0, step=8, factory=FakeFactory())


def test_default_factory_refuses_under_mps_percentage(monkeypatch):
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "50")
    with pytest.raises(RuntimeError, match="overrides green-context"):
        torch_green_stream_factory()(64)


# --- imports without CUDA --------------------------------------------------------------------------

def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_gpu_backends_import_without_torch():
    # With torch made unimportable, both modules still import and the backends can be built.
    result = run_python(
        "import sys; sys.modules['torch'] = None\n"
        "import engine.partition.mps as m, engine.partition.green_contexts as g\n"
        "g.GreenContexts(132, 8, 8); m.MpsPercent()\n"
        "print('ok')\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_gpu_backends_do_not_load_torch_at_import():
    result = run_python(
        "import sys\n"
        "import engine.partition.mps, engine.partition.green_contexts\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
