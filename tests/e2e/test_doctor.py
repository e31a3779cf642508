"""`semipd doctor` on this machine's CPU: two real engines, every check judged and passed."""

import os
import re

import pytest
import torch

from tests.conftest import run_semipd


@pytest.mark.parametrize("storage", ["files", "ipc"])
def test_the_doctor_passes_every_check_on_a_working_cpu_engine(tiny_model, tmp_path, storage):
    # ipc: the GPU design's storage, as `semipd doctor --gpu --storage ipc` checks it on a GPU
    done = run_semipd("doctor", "--model", str(tiny_model), "--requests", "40", "--log-dir", str(tmp_path),
                      "--storage", storage, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "ok   greedy output semi-pd = unified: 5 of 5 prompts token for token" in out
    assert re.search(r"ok   one KV pool: .*: (29\d|300) tokens from the cache", out), out
    cores = len(os.sched_getaffinity(0))
    if cores == 2:  # 1,1 is the only disjoint split
        assert "info the split acts on compute: one decode share among the disjoint splits of 2 units" in out
    else:
        assert re.search(r"info the split acts on compute: decode p50 time per token [\d.]+ ms at split", out), out
    assert "ok   20 re-partitions under load: 40 of 40 requests completed, 20 of 20 splits applied" in out
    assert out.rstrip().endswith("3 of 3 checks passed")


def test_the_doctor_refuses_bad_arguments_and_says_when_there_is_no_gpu():
    zero = run_semipd("doctor", "--requests", "0")
    assert zero.returncode == 2 and "--requests 0: must be 1 or more" in zero.stderr
    alone = run_semipd("doctor", "--probe-only")
    assert alone.returncode == 2 and "--probe-only goes with --gpu" in alone.stderr
    partition = run_semipd("doctor", "--gpu-partition", "green-contexts")
    assert partition.returncode == 2 and "--gpu-partition goes with --gpu --storage ipc" in partition.stderr
    probe = run_semipd("doctor", "--gpu", "--probe-only")
    if torch.cuda.is_available():
        assert probe.stdout.startswith("info ") and " SMs, compute capability " in probe.stdout
    else:
        assert probe.returncode == 1 and "FAIL no CUDA device visible to torch" in probe.stdout
