"""One tuner per engine of a fleet, each moving its own engine's split: a load that shifts on one
engine moves that engine's split both ways, while the other engine's tuner, on and watching its
idle engine, moves nothing.

On this 2-core machine both engines span both cores: an engine of one core has a single split
(1,1: unified), nothing to move, so disjoint cores cannot show a split moving here."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.conftest import running_fleet, start_tuner
from tests.live_tuning import get, shifting_load, shifting_load_tuner_args


@pytest.fixture(scope="module")
def fleet(tiny_model, tmp_path_factory):
    cores = sorted(os.sched_getaffinity(0))
    assert len(cores) >= 2, "two cores are needed for a split to move"
    env = {k: v for k, v in os.environ.items() if k != "SEMIPD_ADMIN_KEY"} | {"PYTHONUNBUFFERED": "1"}
    with running_fleet(tiny_model, tmp_path_factory.mktemp("fleet"), [cores, cores], env) as fleet:
        yield fleet


def test_a_load_shifting_on_one_engine_moves_that_engines_split_only(fleet, tmp_path):
    shifting, idle = fleet.engines
    args = shifting_load_tuner_args(shifting.url, tmp_path)
    tuners = [start_tuner(e.url, tmp_path / f"tuner-{i}.db", *args) for i, e in enumerate(fleet.engines)]
    try:
        idle_split = get(idle.url, "/semipd/split")["split"]
        decisions = shifting_load(shifting.url, tuners[0].url)  # both moves, within a few ticks each
        idle_state = get(tuners[1].url)
        assert idle_state["status"] == "ok" and idle_state["settings"]["enabled"]
        assert idle_state["windows"], "the idle engine's tuner saw no windows: it was not watching"
        assert [d for d in idle_state["decisions"] if d["applied"]] == []
        assert get(idle.url, "/semipd/split")["split"] == idle_split
        moved = [d["new"] for d in decisions]
        print(f"the shifting engine's split moved {moved}; the idle one's stayed {idle_split}")
    finally:
        for tuner in tuners:
            tuner.stop()
        httpx.post(shifting.url + "/semipd/split", json={"prefill": 1, "decode": 1}, timeout=30)
