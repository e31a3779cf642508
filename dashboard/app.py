"""The semipd control panel (Streamlit). Run it with `semipd dashboard --tuner URL [--engine URL]`;
a fleet's with `--tuner URL` once per engine (and `--router-metrics URL`): the fleet view on top,
then the panels and controls of the engine chosen.

It talks to the tuner's HTTP API (and the engine's /metrics) only. The live panels refresh every
2 s in a fragment; the controls below them change the tuner's settings, set the split by hand,
and start an Optuna search whose trials it follows. The controls are shown once the user has
given the tuner's key (the tuner checks it); a tuner without a key has open controls, which the
dashboard offers only when it serves loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime

import pandas as pd
import streamlit as st

from contract.access import TUNER_KEY_ENV, is_loopback
from dashboard import tuner_client as api
from dashboard.fleet_view import engine_row, fleet_goodput, router_health
from policies import POLICIES, get_policy


def from_command_line() -> tuple[list[str], str, str, str]:
    """(tuner URLs: one per engine, engine URL, the router's metrics URL, the address this dashboard serves)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--tuner", action="append")
    parser.add_argument("--engine", default=os.environ.get("SEMIPD_ENGINE_URL", ""))
    parser.add_argument("--router-metrics", default="")
    parser.add_argument("--bind", default="127.0.0.1")
    args, _ = parser.parse_known_args(sys.argv[1:])
    tuners = args.tuner or [os.environ.get("SEMIPD_TUNER_URL", "http://127.0.0.1:31000")]
    return tuners, args.engine, args.router_metrics, args.bind


def seconds_ago(windows: list[dict]) -> pd.Index:
    last = windows[-1]["time"]
    return pd.Index([round(w["time"] - last, 1) for w in windows], name="seconds (0 = latest window)")


def frame(windows: list[dict], columns: dict[str, str]) -> pd.DataFrame:
    data = pd.DataFrame([{label: w.get(key) for key, label in columns.items()} for w in windows],
                        index=seconds_ago(windows))
    return data.astype(float)


def live_panels(tuner: str, engine: str) -> None:
    reply = api.state(tuner)
    if reply.error:
        st.error(f"tuner unavailable: {reply.error}")
        return
    s = reply.data
    settings, windows = s["settings"], s["windows"]
    split = s["split"]
    top = st.columns(6)
    top[0].metric("TTFT SLO", f"{settings['ttft_slo_s'] * 1e3:.0f} ms")
    top[1].metric("TPOT SLO", f"{settings['tpot_slo_s'] * 1e3:.0f} ms")
    top[2].metric("split (prefill, decode)", f"{split['split']['prefill']}, {split['split']['decode']}" if split else "-",
                  help=split["valid"] if split else None)
    top[3].metric("tuner", f"{settings['policy']} {'on' if settings['enabled'] else 'off'}")
    observing = s["status"].startswith("observing")  # a unified engine: windows, no split
    top[4].metric("engine", "ok" if s["status"] == "ok" else "unified" if observing else "unreachable")
    top[5].metric("requests/s", f"{windows[-1]['rate']:.1f}" if windows else "-", help="arrivals in the last window")
    if observing:
        st.info(f"engine: {s['status']}")
    elif s["status"] != "ok":
        st.warning(f"engine: {s['status']}")
    if s["last_reason"]:
        st.caption(f"last decision: {s['last_reason']}")
    if not windows:
        st.info("waiting for the first windows of traffic")
        return
    left, right = st.columns(2)
    for column, name, slo in ((left, "ttft", settings["ttft_slo_s"]), (right, "tpot", settings["tpot_slo_s"])):
        data = frame(windows, {f"{name}_p50_s": "p50", f"{name}_p90_s": "p90", f"{name}_p99_s": "p99"})
        data["SLO"] = slo
        column.subheader(f"{name.upper()} (s)")
        column.line_chart(data)
    left, right = st.columns(2)
    attained = frame(windows, {"ttft_attainment": "TTFT", "tpot_attainment": "TPOT"})
    # the histograms are per metric: both SLOs together are met by at least this share
    attained["both (at least)"] = (attained["TTFT"] + attained["TPOT"].fillna(1.0) - 1).clip(lower=0)
    left.subheader("SLO attainment per window")
    left.line_chart(attained)
    load = frame(windows, {"rate": "requests/s", "waiting": "queued for prefill", "running": "decoding"})
    load["goodput (req/s within both SLOs, at least)"] = load["requests/s"] * attained["both (at least)"]
    right.subheader("load and goodput")
    right.line_chart(load)
    left, right = st.columns(2)
    left.subheader("compute split")
    left.line_chart(pd.DataFrame([{"prefill": w["split"][0], "decode": w["split"][1]} for w in windows],
                                 index=seconds_ago(windows)))
    right.subheader("decisions")
    decisions = pd.DataFrame(s["decisions"][-20:])
    if decisions.empty:
        right.caption("no split changes yet")
    else:
        decisions["time"] = decisions["time"].map(lambda t: datetime.fromtimestamp(t).strftime("%H:%M:%S"))
        right.dataframe(decisions[["time", "old", "new", "who", "applied", "reason", "error"]], hide_index=True)
    if engine:
        cache = api.engine_cache(engine)
        if cache.error:
            st.warning(cache.error)
        else:
            c = cache.data
            cols = st.columns(2)
            cols[0].metric("KV cache in use", f"{c['kv_use']:.1%}" if c["kv_use"] is not None else "-")
            cols[1].metric("radix cache hit rate", f"{c['cache_hit_rate']:.1%}")
    gpu_panel()


def gpu_panel() -> None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVML: no GPU here, or no driver
        st.caption("GPU: none found on this machine (NVML unavailable); the engine runs on CPU cores.")
        return
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        memory = pynvml.nvmlDeviceGetMemoryInfo(h)
        cols = st.columns(4)
        cols[0].metric(f"GPU {i} utilisation", f"{pynvml.nvmlDeviceGetUtilizationRates(h).gpu}%")
        cols[1].metric("SM clock", f"{pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)} MHz")
        cols[2].metric("memory", f"{memory.used / 2**30:.1f} / {memory.total / 2**30:.1f} GiB")
        cols[3].metric("power", f"{pynvml.nvmlDeviceGetPowerUsage(h) / 1000:.0f} W")


def unlocked(tuner: str, bind: str) -> tuple[bool, str | None]:
    """(whether this session may use the controls, the key to send with them). Asks for the
    tuner's key, which the tuner checks, and keeps it in the session."""
    health = api.health(tuner)
    if health.error:
        return False, None
    if not health.data.get("key_required"):
        if is_loopback(bind):
            return True, None
        st.warning(f"read-only: the tuner has no key, so its controls are not offered beyond this machine "
                   f"(start the tuner with {TUNER_KEY_ENV} set)")
        return False, None
    if st.session_state.get("tuner_key"):
        return True, st.session_state["tuner_key"]
    with st.form("unlock"):
        typed = st.text_input("tuner key", type="password", key="typed_key",
                              help=f"the tuner's {TUNER_KEY_ENV}; `semipd up` prints it")
        if st.form_submit_button("unlock controls"):
            reply = api.check_key(tuner, typed)
            if reply.error:
                st.error(f"key refused: {reply.error}")
            else:
                st.session_state["tuner_key"] = typed
                st.rerun()
    st.caption("read-only until the tuner's key is given: SLOs, policy, the split and searches need it")
    return False, None


def controls(tuner: str, key: str | None) -> None:
    reply = api.state(tuner)
    if reply.error:
        return
    settings, split = reply.data["settings"], reply.data["split"]
    slos, policy, manual, search = st.tabs(["SLOs", "policy", "split by hand", "search"])
    with slos, st.form("slos"):
        ttft = st.number_input("TTFT SLO (s)", value=settings["ttft_slo_s"], format="%.3f", key="ttft_slo")
        tpot = st.number_input("TPOT SLO (s)", value=settings["tpot_slo_s"], format="%.4f", key="tpot_slo")
        if st.form_submit_button("apply SLOs"):
            show(api.update_settings(tuner, key, ttft_slo_s=ttft, tpot_slo_s=tpot), "SLOs updated")
    with policy:
        enabled = st.toggle("tuner on", value=settings["enabled"], key="enabled")
        if enabled != settings["enabled"]:
            show(api.update_settings(tuner, key, enabled=enabled), f"tuner {'on' if enabled else 'off'}")
        # outside the form: choosing a policy shows its parameters at once
        name = st.selectbox("policy", POLICIES, index=POLICIES.index(settings["policy"]), key="policy")
        with st.form("policy"):
            shown = settings["params"] if name == settings["policy"] else get_policy(name).DEFAULTS
            text = st.text_area("parameters (JSON)", value=json.dumps(shown, indent=1), key=f"params_{name}")
            if st.form_submit_button("apply policy"):
                try:
                    params = json.loads(text)
                except ValueError as exc:
                    st.error(f"parameters are not JSON: {exc}")
                else:
                    show(api.update_settings(tuner, key, policy=name, params=params), f"policy {name} applied")
    with manual:
        if not split:
            st.info("the engine's split is not known yet")
        else:
            units = split["units"]
            with st.form("split"):
                st.caption(f"valid: {split['valid']}")
                prefill = st.number_input("prefill", 1, units, split["split"]["prefill"], key="split_prefill")
                decode = st.number_input("decode", 1, units, split["split"]["decode"], key="split_decode")
                sure = st.checkbox("yes, set this split now", key="split_confirm")
                if st.form_submit_button("set split"):
                    if not sure:
                        st.warning("tick the confirmation first")
                    else:
                        show(api.force_split(tuner, key, int(prefill), int(decode)),
                             f"split set to {prefill},{decode}")
    with search:
        search_panel(settings)


def search_panel(settings: dict) -> None:
    with st.form("search"):
        name = st.selectbox("policy", POLICIES, index=POLICIES.index(settings["policy"]), key="search_policy")
        workload = st.text_input("workload SPEC", key="search_workload",
                                 value="poisson:rate=4,prompt=uniform(100,2000),output=uniform(20,400),count=600")
        trials = st.number_input("trials", 1, 1000, 30, key="search_trials")
        if st.form_submit_button("start search (simulator)"):
            folder = tempfile.mkdtemp(prefix="semipd-search-")
            command = [sys.executable, "-m", "cli.main", "search", "--policy", name, "--workload", workload,
                       "--ttft-slo", str(settings["ttft_slo_s"]), "--tpot-slo", str(settings["tpot_slo_s"]),
                       "--trials", str(int(trials)), "--storage", f"sqlite:///{folder}/study.db",
                       "--study", "dashboard", "--out", f"{folder}/best.json"]
            log = open(f"{folder}/search.log", "w")
            st.session_state["search_run"] = {"folder": folder, "process": subprocess.Popen(command, stdout=log, stderr=log)}
    if "search_run" in st.session_state:
        search_progress()


@st.fragment(run_every=2)
def search_progress() -> None:
    import optuna

    from tuner.search import open_storage

    run = st.session_state["search_run"]
    done = run["process"].poll()
    try:
        study = optuna.load_study(study_name="dashboard", storage=open_storage(f"sqlite:///{run['folder']}/study.db"))
    except Exception:  # the study is created by the search process: not there for its first moments
        st.caption("search starting ...")
        return
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    st.write(f"{len(complete)} trials done" + ("" if done is None else f" (search finished, exit {done})"))
    if complete:
        st.metric("best value so far", f"{study.best_value:.4f}")
        st.line_chart(pd.DataFrame({"value": [t.value for t in complete]}))
        if len(complete) >= 3:
            importance = optuna.importance.get_param_importances(study)
            st.bar_chart(pd.DataFrame({"importance": importance}))
    if done not in (None, 0):
        st.error(open(f"{run['folder']}/search.log").read()[-2000:])


def show(reply: api.Reply, success: str) -> None:
    if reply.error:
        st.error(reply.error)
    else:
        st.success(success)


def fleet_panel(tuners: list[str], router_metrics: str) -> None:
    health, error = router_health(router_metrics) if router_metrics else ({}, None)
    rows = []
    for tuner in tuners:
        reply = api.state(tuner)
        rows.append(engine_row(tuner, reply.data if not reply.error else None, reply.error, health))
    goodput, rate = fleet_goodput(rows)
    cols = st.columns(4)
    cols[0].metric("engines serving", f"{sum(r['serving'] == 'yes' for r in rows)} of {len(rows)}")
    cols[1].metric("router counts healthy", f"{sum(r['router'] == 'healthy' for r in rows)} of {len(rows)}"
                   if router_metrics else "-")
    cols[2].metric("fleet requests/s", f"{rate:.2f}")
    cols[3].metric("fleet goodput", f"{goodput:.2f} req/s", help="requests/s within both SLOs, at least, summed")
    if error:
        st.warning(error)
    for row in rows:
        if row["router"] == "down" or row["serving"] != "yes":
            st.error(f"engine {row['engine']} is down: router {row['router']}, tuner says {row['serving']}")
    st.dataframe(pd.DataFrame(rows), hide_index=True)


def main() -> None:
    st.set_page_config(page_title="semipd", layout="wide")
    tuners_default, engine_default, router_metrics, bind = from_command_line()
    tuners = st.session_state.setdefault("tuner_urls", tuners_default)
    router_metrics = st.session_state.setdefault("router_metrics_url", router_metrics)
    bind = st.session_state.setdefault("bind", bind)
    st.title("semipd: SLOs and the compute split")
    if len(tuners) > 1:
        st.subheader("fleet")
        st.fragment(run_every=2)(lambda: fleet_panel(tuners, router_metrics))()
        st.divider()
        # one engine's panels and controls at a time
        tuner = st.selectbox("engine (its tuner)", tuners, key="tuner_url")
        engine = (api.state(tuner).data or {}).get("engine", "")
    else:
        tuner = st.session_state.setdefault("tuner_url", tuners[0])
        engine = st.session_state.setdefault("engine_url", engine_default)
    st.fragment(run_every=2)(lambda: live_panels(tuner, engine))()
    st.divider()
    allowed, key = unlocked(tuner, bind)
    if allowed:
        controls(tuner, key)


main()
