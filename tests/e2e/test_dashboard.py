"""The Streamlit control panel, driven by streamlit.testing against a real tuner and engine."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from loadtest.load_generator import replay
from loadtest.workload import Request
from tests.conftest import REPO, free_port, start_tuner

APP = str(REPO / "dashboard" / "app.py")
KEY = "dashboard-test-key"


@pytest.fixture(scope="module")
def tuner(semipd_server, tmp_path_factory):
    server = start_tuner(semipd_server.url, tmp_path_factory.mktemp("dash") / "t.db", "--policy", "static",
                         "--ttft-slo", "1", "--tpot-slo", "0.5", "--interval", "0.5", "--off",
                         env={"SEMIPD_TUNER_KEY": KEY})
    for seed in range(3):  # traffic, so that there are windows to draw
        asyncio.run(replay(semipd_server.url, [Request(0.1 * i, 32, 8) for i in range(6)], 1000, seed=500 + seed))
    deadline = time.monotonic() + 20
    while not httpx.get(server.url + "/state").json()["windows"] and time.monotonic() < deadline:
        time.sleep(0.5)
    yield server
    server.stop()


def app(tuner_url: str, engine_url: str = "", key: str | None = KEY, bind: str = "127.0.0.1") -> AppTest:
    """The page as a user who has given `key` (None: not given) sees it."""
    at = AppTest.from_file(APP, default_timeout=30)
    at.session_state["tuner_url"] = tuner_url
    at.session_state["engine_url"] = engine_url
    at.session_state["bind"] = bind
    if key:
        at.session_state["tuner_key"] = key
    return at.run()


def labels(at: AppTest) -> list[str]:
    return [b.label for b in at.button]


def test_controls_are_shown_only_once_the_tuner_took_the_key(tuner, tmp_path):
    at = app(tuner.url, key=None)
    assert not at.exception and "apply SLOs" not in labels(at) and "set split" not in labels(at)
    assert labels(at) == ["unlock controls"] and at.metric  # the live panels are there, read-only
    at.text_input(key="typed_key").set_value("not-the-key")
    at.button[0].click().run()
    assert any("key refused" in e.value and "401" in e.value for e in at.error)
    assert "apply SLOs" not in labels(at)
    at.text_input(key="typed_key").set_value(KEY)
    at.button[0].click().run()
    assert {"apply SLOs", "apply policy", "set split", "start search (simulator)"} <= set(labels(at))
    # a key the tuner does not take, however it got into the session, changes nothing
    forged = app(tuner.url, key="forged")
    forged.number_input(key="ttft_slo").set_value(0.3)
    forged.button[0].click().run()
    assert any("401" in e.value for e in forged.error) and settings(tuner)["ttft_slo_s"] != 0.3
    # a tuner without a key: its open controls are offered on loopback only
    keyless = start_tuner(f"http://127.0.0.1:{free_port()}", tmp_path / "open.db", "--ttft-slo", "1",
                          "--tpot-slo", "1")
    try:
        assert "apply SLOs" in labels(app(keyless.url, key=None))
        exposed = app(keyless.url, key=None, bind="0.0.0.0")
        assert not labels(exposed) and any("read-only" in w.value for w in exposed.warning)
    finally:
        keyless.stop()


def settings(tuner) -> dict:
    return httpx.get(tuner.url + "/state", timeout=10).json()["settings"]


def test_live_panels_show_slos_split_and_charts(tuner, semipd_server):
    at = app(tuner.url, semipd_server.url)
    assert not at.exception and not at.error
    labels = {m.label: m.value for m in at.metric}
    assert labels["TTFT SLO"] == "1000 ms" and labels["split (prefill, decode)"] == "1, 1"
    assert "KV cache in use" in labels and "radix cache hit rate" in labels
    assert [h.value for h in at.subheader][:4] == ["TTFT (s)", "TPOT (s)", "SLO attainment per window",
                                                   "load and goodput"]
    assert any("GPU" in c.value for c in at.caption)


def test_slo_form_applies_and_rejects(tuner):
    at = app(tuner.url)
    at.number_input(key="ttft_slo").set_value(0.75)
    at.button[0].click().run()  # "apply SLOs"
    assert at.success[0].value == "SLOs updated" and settings(tuner)["ttft_slo_s"] == 0.75
    at.number_input(key="ttft_slo").set_value(0.0)
    at.button[0].click().run()
    assert "must be a number of seconds in (0, 3600)" in at.error[0].value
    assert settings(tuner)["ttft_slo_s"] == 0.75  # unchanged


def test_tuner_toggle_and_policy(tuner):
    at = app(tuner.url)
    at.toggle(key="enabled").set_value(True).run()
    assert settings(tuner)["enabled"] is True
    at.toggle(key="enabled").set_value(False).run()
    assert settings(tuner)["enabled"] is False
    at.selectbox(key="policy").set_value("semipd").run()
    assert '"max_steps": 3' in at.text_area(key="params_semipd").value  # its defaults, shown on choosing it
    at.text_area(key="params_semipd").set_value('{"max_steps": 2}')
    next(b for b in at.button if b.label == "apply policy").click().run()
    assert settings(tuner)["policy"] == "semipd" and settings(tuner)["params"]["max_steps"] == 2
    at.text_area(key="params_semipd").set_value("{not json")
    next(b for b in at.button if b.label == "apply policy").click().run()
    assert any("not JSON" in e.value for e in at.error)


def test_split_by_hand_needs_confirmation(tuner, semipd_server):
    at = app(tuner.url)
    at.number_input(key="split_prefill").set_value(2)
    next(b for b in at.button if b.label == "set split").click().run()
    assert any("confirmation" in w.value for w in at.warning)
    assert httpx.get(semipd_server.url + "/semipd/split").json()["split"]["prefill"] == 1
    at.checkbox(key="split_confirm").check()
    next(b for b in at.button if b.label == "set split").click().run()
    assert any("split set to 2,1" in s.value for s in at.success)
    assert httpx.get(semipd_server.url + "/semipd/split").json()["split"] == {"prefill": 2, "decode": 1}
    httpx.post(semipd_server.url + "/semipd/split", json={"prefill": 1, "decode": 1})


def test_search_starts_and_is_followed(tuner):
    at = app(tuner.url)
    at.text_input(key="search_workload").set_value("poisson:rate=4,prompt=uniform(100,800),output=uniform(20,200),count=200")
    at.number_input(key="search_trials").set_value(4)
    next(b for b in at.button if b.label == "start search (simulator)").click().run()
    process = at.session_state["search_run"]["process"]
    assert process.wait(timeout=120) == 0
    at.run()
    assert any("4 trials done" in m.value for m in at.markdown)
    assert any(m.label == "best value so far" for m in at.metric)


def test_unreachable_tuner_is_shown_not_thrown():
    at = app(f"http://127.0.0.1:{free_port()}")
    assert not at.exception
    assert "tuner unavailable" in at.error[0].value


def test_the_page_in_a_real_browser(tuner, semipd_server, tmp_path):
    """`semipd dashboard` as a user starts it, opened in headless Chromium: live data, charts and
    the split are on the page; the screenshot is left in the test's folder."""
    import shutil

    from stack.server_process import ServerProcess
    from tests.conftest import SEMIPD
    from tests.headless_browser import open_page

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (`make test` installs it)"
    port = free_port()
    dashboard = ServerProcess([*SEMIPD, "dashboard", "--tuner", tuner.url, "--engine", semipd_server.url,
                               "--port", str(port)], f"http://127.0.0.1:{port}", tmp_path / "dashboard.log")
    dashboard.start(timeout_s=60, health_path="/_stcore/health")
    try:
        asyncio.run(replay(semipd_server.url, [Request(0.1 * i, 32, 8) for i in range(6)], 1000, seed=900))
        shot = tmp_path / "dashboard.png"
        slo_ms = f"{settings(tuner)['ttft_slo_s'] * 1e3:.0f} ms"
        expect = ["TTFT SLO", slo_ms, "split (prefill, decode)", "compute split", "decisions", "unlock controls"]
        text, html = open_page(chromium, dashboard.url, free_port(), expect, 90, shot)
        for wanted in expect:
            assert wanted in text, f"{wanted!r} is not on the page"
        assert html.count("vega-embed") >= 4  # the charts rendered
        assert shot.stat().st_size > 20_000
    finally:
        dashboard.stop()
