"""`semipd plan --launch` as a user runs it: the planner's best 2-device colocated plan (two stock
SGLang instances behind SGLang's router, one core each) starts on the tiny model; `semipd bench`
against the router's URL completes with no failure, both instances serve; Ctrl-C stops every
process it started."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time

import httpx
import psutil
import pytest

from contract.access import bearer
from tests.conftest import REPO, SEMIPD, free_port, run_semipd
from tuner.engine_metrics import parse, total

PLAN = ["plan", "--model", "llama-3-8b", "--hardware", "h100", "--devices", "2", "--kinds", "colocated",
        "--workload", "poisson:rate=2,prompt=uniform(64,512),output=uniform(32,128),count=100",
        "--ttft-slo", "0.25", "--tpot-slo", "0.1", "--requests", "50", "--iterations", "2", "--top", "3"]


def served(url: str) -> float:
    return total(parse(httpx.get(url + "/metrics", timeout=10).text), "sglang:num_requests_total")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture()
def launched(tiny_model, tmp_path):
    """The running `semipd plan --launch` process, its output lines (read as they come), run folder."""
    assert len(os.sched_getaffinity(0)) >= 2, "a 2-device plan needs two cores here"
    port = free_port()
    command = [*SEMIPD, *PLAN, "--launch", "--launch-port", str(port), "--router-metrics-port", str(free_port()),
               "--run-dir", str(tmp_path / "run")]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "SEMIPD_ADMIN_KEY": "plan-test-key"})
    lines: list[str] = []

    def read() -> None:
        for line in process.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 600
        while not any(l.startswith("semipd plan: ready after") for l in lines):
            assert process.poll() is None, "".join(lines)[-4000:]
            assert time.monotonic() < deadline, "not ready within 600 s:\n" + "".join(lines)[-4000:]
            time.sleep(1)
        yield process, lines, tmp_path / "run"
    finally:
        if process.poll() is None:  # a failed test: its own clean-up, as a user's Ctrl-C
            process.send_signal(signal.SIGINT)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)
        reader.join(10)


def test_a_launched_colocated_plan_serves_a_bench_through_the_router_and_stops_whole(launched):
    process, lines, run_dir = launched
    text = "".join(lines)
    assert "launching plan 1 (TP1 " in text and "x 2) on cores" in text
    url = re.search(r"clients use (http://\S+) \(SGLang's router\)", text).group(1)
    instances = dict(re.findall(r"^  instance (\d)  (http://\S+)  \(cores \d+\)", text, re.M))
    assert len(instances) == 2, text

    # each instance is stock SGLang on a core of its own
    tree = psutil.Process(process.pid).children(recursive=True)
    for url_i in instances.values():
        port = url_i.rsplit(":", 1)[1]
        server = [p for p in tree if "sglang.launch_server" in " ".join(p.cmdline())
                  and p.cmdline()[p.cmdline().index("--port") + 1] == port]
        assert len(server) == 1, [p.cmdline() for p in tree]
    affinities = sorted(tuple(p.cpu_affinity()) for p in tree if "sglang.launch_server" in " ".join(p.cmdline()))
    assert len(affinities) == 2 and affinities[0] != affinities[1] and all(len(a) == 1 for a in affinities)

    assert httpx.get(url + "/workers", timeout=10).status_code == 401  # the router's control routes need the key
    assert httpx.get(url + "/workers", headers=bearer("plan-test-key"), timeout=10).status_code == 200

    before = {i: served(u) for i, u in instances.items()}
    bench = run_semipd("bench", "--url", url, "--workload", "poisson:rate=2,prompt=uniform(32,256),output=16,count=16",
                       "--ttft-slo", "10", "--tpot-slo", "2", "--json", timeout=300)
    assert bench.returncode == 0, bench.stderr[-3000:]
    report = json.loads(bench.stdout)
    assert report["api"] == "sglang"  # the default, auto, found SGLang's router
    assert report["failed"] == 0 and report["completed"] == 16, report
    spread = {i: served(u) - before[i] for i, u in instances.items()}
    assert sum(spread.values()) == 16 and min(spread.values()) >= 1, spread  # both instances served

    pids = [process.pid] + [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
    assert len(pids) >= 7  # the plan, two launchers with their scheduler and detokenizer, the router
    process.send_signal(signal.SIGINT)
    assert process.wait(120) == 0
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [pid for pid in pids if not gone(pid)]
    assert not left, [psutil.Process(p).cmdline() for p in left]
    time.sleep(0.5)
    assert "semipd plan: stopped" in "".join(lines)
