"""`semipd up --demo` as a new user starts it: the README's first command, run in the checkout with
an empty model cache; the dashboard, opened in headless Chromium, shows live traffic within 60 s
of the stack printing its URLs; Ctrl-C stops everything and no demo request failed."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import httpx

from contract.access import bearer
from stack.up import port_in_use
from tests.conftest import REPO, free_port
from tests.headless_browser import open_page

PORTS = (30000, 31000, 8501, 9090)  # the defaults a user gets (9090: Prometheus)


def readme_main_command() -> str:
    quick_start = REPO.joinpath("README.md").read_text().split("## Quick start", 1)[1]
    return next(line.strip() for line in quick_start.splitlines() if line.startswith("    "))


def wait_for_line(process: subprocess.Popen, pattern: str, timeout_s: float, seen: list[str]) -> str:
    deadline = time.monotonic() + timeout_s
    os.set_blocking(process.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line:
            seen.append(line)
            if re.search(pattern, line):
                return line
        elif process.poll() is not None:
            break
        else:
            time.sleep(0.2)
    raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s; output:\n{''.join(seen)}")


def test_semipd_up_demo_from_the_readme_shows_traffic(tmp_path):
    command = readme_main_command()
    assert "up" in command, f"the README's first command should start the stack, not {command!r}"
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (`make test` installs it)"
    assert not [p for p in PORTS if port_in_use("127.0.0.1", p)], "a default port is taken: is a stack running?"
    env = {**os.environ, "SEMIPD_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}  # an empty cache
    started = time.monotonic()
    stack = subprocess.Popen(["bash", "-c", command], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen: list[str] = []
    try:
        wait_for_line(stack, r"^\s+dashboard\s+http", 900, seen)
        ready = time.monotonic()
        dashboard = re.search(r"dashboard\s+(\S+)", "".join(seen)).group(1)
        shot = tmp_path / "up.png"
        traffic = re.compile(r"requests/s\s+(?!0\.0\b)\d+\.\d")  # a window with arrivals
        text, _ = open_page(chromium, dashboard, free_port(), ["compute split", traffic], 60, shot)
        shown_after = time.monotonic() - ready
        assert traffic.search(text), f"no traffic on the page after 60 s:\n{text[:1500]}"
        assert shown_after <= 60 + 10  # the page wait plus the screenshot
        print(f"stack ready after {ready - started:.0f} s (model built from an empty cache); "
              f"traffic on the page {shown_after:.0f} s later")
        state = httpx.get("http://127.0.0.1:31000/state", timeout=10).json()
        assert state["status"] == "ok" and sum(w["ttft_count"] for w in state["windows"]) > 0
        # keys were generated: the tuner's is printed, both are in the run folder, for the user only
        tuner_key = re.search(r"tuner key\s+(\S+)\s+\(the dashboard",
                              wait_for_line(stack, r"tuner key", 10, seen)).group(1)
        keys_file = REPO / "semipd-up" / "keys.env"
        assert keys_file.stat().st_mode & 0o777 == 0o600
        keys = dict(line.split("=", 1) for line in keys_file.read_text().split())
        assert keys["SEMIPD_TUNER_KEY"] == tuner_key and len(keys["SEMIPD_ADMIN_KEY"]) >= 20
        tuner_auth, engine_split = "http://127.0.0.1:31000/auth", "http://127.0.0.1:30000/semipd/split"
        assert httpx.post(tuner_auth, json={}, timeout=10).status_code == 401
        assert httpx.post(tuner_auth, json={}, headers=bearer(tuner_key), timeout=10).status_code == 200
        assert httpx.get(engine_split, timeout=10).status_code == 401
        assert httpx.get(engine_split, headers=bearer(keys["SEMIPD_ADMIN_KEY"]), timeout=10).status_code == 200
    finally:
        os.killpg(stack.pid, signal.SIGINT)  # Ctrl-C in the terminal
        output = stack.communicate(timeout=120)[0]
    assert "semipd up: stopped" in output, output[-3000:]
    assert re.search(r"demo load: [1-9]\d* requests answered, 0 of them failed", output), output[-3000:]
    time.sleep(1)
    assert not [p for p in PORTS if port_in_use("127.0.0.1", p)], "something still holds a port after Ctrl-C"
