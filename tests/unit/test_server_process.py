"""Starting a server: one whose port another process took is reported at once, not waited on."""

from __future__ import annotations

import sys
import time

import pytest

from stack.server_process import PortTaken, ServerProcess, ServerStartError

# What uvicorn logs when the port is taken; the server then hangs without exiting.
HANGS_ON_A_TAKEN_PORT = ("import time; print('ERROR:    [Errno 98] error while attempting to bind on address "
                         "(\\'127.0.0.1\\', 9): address already in use', flush=True); time.sleep(120)")


def test_a_taken_port_is_reported_at_once_and_the_server_stopped(tmp_path):
    server = ServerProcess([sys.executable, "-c", HANGS_ON_A_TAKEN_PORT], "http://127.0.0.1:9", tmp_path / "s.log")
    started = time.monotonic()
    with pytest.raises(PortTaken, match="the port is taken"):
        server.start(timeout_s=60)
    assert time.monotonic() - started < 20
    assert server.process.poll() is not None  # stopped, not left hanging


def test_a_server_that_never_answers_times_out(tmp_path):
    server = ServerProcess([sys.executable, "-c", "import time; time.sleep(120)"], "http://127.0.0.1:9",
                           tmp_path / "s.log")
    with pytest.raises(ServerStartError, match="did not answer within 2 s") as raised:
        server.start(timeout_s=2)
    assert not isinstance(raised.value, PortTaken)
