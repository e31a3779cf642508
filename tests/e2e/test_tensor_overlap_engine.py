"""The engine with tile-group overlap: `semipd serve --tp-size 2` with and without --tp-overlap,
started once for the module, gives the same greedy output as each other and transformers."""

from __future__ import annotations

import pytest

@pytest.fixture(scope="module")
def tp2_servers(tiny_model, tmp_path_factory):
    """`semipd serve --tp-size 2`, without and with --tp-overlap 3 (forced groups: the tiny
    model's GEMMs are far too small for the tuner to split them), started side by side."""
    import os

    from stack.server_process import ServerProcess
    from tests.conftest import EXACT, SEMIPD, free_port

    log_dir = tmp_path_factory.mktemp("tp2")
    servers = {}
    try:
        for name, extra in (("plain", ()), ("overlap", ("--tp-overlap", "3"))):
            port = free_port()
            command = [*SEMIPD, "serve", "--model", str(tiny_model), "--port", str(port), "--tp-size", "2",
                       *EXACT, "--max-total-tokens", "4096", "--skip-server-warmup", *extra]
            servers[name] = ServerProcess(command, f"http://127.0.0.1:{port}", log_dir / f"{name}.log",
                                          env={**os.environ, "PYTHONUNBUFFERED": "1"}).launch()
        for server in servers.values():
            server.wait_ready(timeout_s=300)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def test_engine_tp2_overlap_same_greedy_output(tp2_servers, tiny_model):
    from tests.reference_model import generate_ids, greedy_tokens, prompt_ids

    # 133 tokens = three prefill chunks of at most 64 rows (EXACT), then one-row decode steps
    for length in (5, 40, 133):
        ids = prompt_ids(length, seed=length)
        overlapped = generate_ids(tp2_servers["overlap"].url, ids, 12)
        assert overlapped == generate_ids(tp2_servers["plain"].url, ids, 12), f"prompt of {length}"
        assert overlapped == greedy_tokens(tiny_model, ids, 12), f"prompt of {length}"
    log = tp2_servers["overlap"].log_path.read_text(errors="replace")
    assert "o_proj overlapped" in log and "down_proj overlapped" in log, log[-3000:]
    assert "the layer boundary's all-reduce of an overlapped output is skipped" in log
    plain_log = tp2_servers["plain"].log_path.read_text(errors="replace")
    assert "overlapped" not in plain_log
