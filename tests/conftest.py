"""Shared fixtures: models are built once into the semipd cache; each server starts once per session."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stack.fleet import Fleet, semipd_engine
from stack.server_process import PortTaken, ServerProcess

REPO = Path(__file__).resolve().parent.parent
SEMIPD = [sys.executable, "-m", "cli.main"]


def run_semipd(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`semipd ARGS...` run to completion in the checkout, output captured."""
    return subprocess.run([*SEMIPD, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from engine.default_model import cached_model

    return cached_model("tiny")


@contextlib.contextmanager
def running_fleet(model: Path, folder: Path, groups: list[list[int]], env: dict, **fleet_args):
    """Semi-pd engines on `groups` of cores (greedy-exact settings) behind SGLang's router, all on
    loopback, until the block ends; engines restarted in it are stopped too."""
    ports = [free_port() for _ in groups]
    fleet = Fleet(folder, "127.0.0.1", free_port(), ports, groups, env, metrics_port=free_port(),
                  commands=[semipd_engine(g, "127.0.0.1", p, ["--model", str(model), *EXACT])
                            for g, p in zip(groups, ports)], **fleet_args)
    parts = fleet.launch()
    try:
        fleet.wait_ready(300)
        yield fleet
    finally:
        for _, part in reversed(parts):
            part.stop()
        for engine in fleet.engines:
            engine.stop()


def start_semipd_server(model: Path, log_dir: Path, *extra: str, port: int | None = None) -> ServerProcess:
    """`semipd serve` on loopback, once ready. A free port chosen here can be taken before the server
    binds it (SGLang picks its own internal ports meanwhile): then a second one is tried."""
    for attempt in range(1 if port else 2):
        chosen = port or free_port()
        command = [*SEMIPD, "serve", "--model", str(model), "--port", str(chosen), *extra]
        server = ServerProcess(command, f"http://127.0.0.1:{chosen}", log_dir / f"server-{chosen}.log",
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            return server.start(timeout_s=240)
        except PortTaken:
            if port or attempt:
                raise


def post_declaring(url: str, path: str, length: int) -> tuple[int, str]:
    """(status, body) of a POST that announces a body of `length` bytes and sends none of it: a
    server must refuse an oversized body from its headers, before reading (or waiting for) it."""
    from urllib.parse import urlparse

    where = urlparse(url)
    with socket.create_connection((where.hostname, where.port), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: {where.netloc}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {length}\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < 2:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


# float32 for exact comparison with transformers; chunked prefill small enough that test prompts
# span several chunks.
EXACT = ("--dtype", "float32", "--chunked-prefill-size", "64")


@pytest.fixture(scope="session")
def unified_server(tiny_model, tmp_path_factory):
    # SGLang's own loop spins a core while idle unless told to sleep: this server idles through most
    # of the session, beside the servers under test on 2 cores
    server = start_semipd_server(tiny_model, tmp_path_factory.mktemp("unified"), "--mode", "unified", *EXACT,
                                 "--sleep-on-idle")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def semipd_server(tiny_model, tmp_path_factory):
    server = start_semipd_server(tiny_model, tmp_path_factory.mktemp("semipd"), "--mode", "semi-pd",
                                 "--split", "1,1", *EXACT)
    yield server
    server.stop()


def start_tuner(engine_url: str, store: Path, *extra: str, port: int | None = None,
                env: dict | None = None) -> ServerProcess:
    """`semipd tune` as a user starts it, on loopback (`env`: more environment, such as keys)."""
    port = port or free_port()
    command = [*SEMIPD, "tune", "--engine", engine_url, "--port", str(port), "--store", str(store), *extra]
    tuner = ServerProcess(command, f"http://127.0.0.1:{port}", store.with_suffix(f".{port}.log"),
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    return tuner.start(timeout_s=60)
