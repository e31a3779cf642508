"""Start a server as a child process, wait until it answers, and stop it with all its children.

Used by tests, benchmarks and `semipd up`: every wait is bounded, and a server that dies
while starting is reported with the end of its log rather than waited on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


SEMIPD = [sys.executable, "-m", "cli.main"]  # the `semipd` command, in this interpreter


class ServerStartError(RuntimeError):
    pass


class PortTaken(ServerStartError):
    """Another process listens on the server's port (it would otherwise hang, never answering)."""


PORT_TAKEN = b"address already in use"  # uvicorn's bind error, in the server's log


@dataclass
class ServerProcess:
    command: list[str]
    url: str
    log_path: Path
    env: dict | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    started_at: float = 0.0
    ready_after_s: float = 0.0

    def start(self, timeout_s: float = 300.0, health_path: str = "/health") -> "ServerProcess":
        return self.launch().wait_ready(timeout_s, health_path)

    def launch(self) -> "ServerProcess":
        """Start the process without waiting for it (several servers can then start at once)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.started_at = time.monotonic()
        # A new session, so that stop() can signal the whole tree SGLang spawns.
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                        env=self.env, start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float = 300.0, health_path: str = "/health") -> "ServerProcess":
        deadline = self.started_at + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"{self.command[0]} exited with code {self.process.returncode} while starting; "
                    f"last log lines:\n{self.log_tail()}")
            if self.port_taken():
                self.stop()
                raise PortTaken(f"{self.url}: the port is taken by another process; last log lines:\n"
                                f"{self.log_tail()}")
            try:
                if httpx.get(self.url + health_path, timeout=2.0).status_code == 200:
                    self.ready_after_s = time.monotonic() - self.started_at
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise ServerStartError(f"{self.url} did not answer within {timeout_s:.0f} s; last log lines:\n"
                               f"{self.log_tail()}")

    def port_taken(self) -> bool:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, os.path.getsize(self.log_path) - 4096))
                return PORT_TAKEN in log.read().lower()
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def pids(self) -> list[int]:
        """The server's process and all its descendants."""
        import psutil

        if self.process is None or self.process.poll() is not None:
            return []
        root = psutil.Process(self.process.pid)
        return [root.pid] + [c.pid for c in root.children(recursive=True)]

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        pgid = os.getpgid(self.process.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # stragglers in the group (scheduler, detokenizer)
        except ProcessLookupError:
            pass
        self.process.wait(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
