"""GPU semi-pd on SGLang's PD multiplexing, against fakes of CUDA and sgl_kernel: the menu of SM
splits, SGLang's own stream-group setup fed with it, the group chosen per step, the control
channel, and every refusal (flags, splits). No GPU: nothing here claims a GPU result."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from engine.partition import InvalidSplit, Split
from engine.partition.green_contexts import SmGranularity
from engine.partition.sm_groups import PdmuxSmGroups, SmMenu, sm_menu, stream_index
from engine.semipd import settings
from tuner.control_loop import nearest_in_menu

H100 = (132, SmGranularity(8, 8))
A100 = (108, SmGranularity(4, 2))


# -- the menu ------------------------------------------------------------------------------------

@pytest.mark.parametrize("device_sms,granularity", [H100, A100])
def test_each_pair_splits_the_device_in_a_valid_group_and_its_remainder(device_sms, granularity):
    menu = sm_menu(device_sms, granularity)
    assert 3 <= len(menu.pairs) <= 6 and menu.groups == len(menu.pairs) + 2
    prefills = [p for p, _ in menu.pairs]
    assert prefills == sorted(prefills, reverse=True)  # pdmux's order: largest prefill first
    for prefill, decode in menu.pairs:
        assert prefill + decode == device_sms  # disjoint: one split of the device, not two carvings
        assert prefill >= granularity.min_sms and (prefill - granularity.min_sms) % granularity.step == 0
        assert decode >= granularity.min_sms


def test_a_valid_split_asked_at_start_joins_the_menu_and_an_invalid_one_does_not():
    assert (24, 108) in sm_menu(*H100, include=Split(24, 108)).pairs
    assert (20, 112) not in sm_menu(*H100, include=Split(20, 112)).pairs  # 20 is no multiple of 8


def test_a_device_too_small_to_split_is_refused():
    with pytest.raises(ValueError, match="cannot be split"):
        sm_menu(12, SmGranularity(8, 8))
    with pytest.raises(ValueError, match="does not split"):
        SmMenu(132, ((64, 64),))


def test_the_stream_group_is_the_split_in_force_when_both_phases_run():
    menu = sm_menu(*H100)
    split = Split(*menu.pairs[2])
    assert stream_index(menu, split, decoding=True, prefilling=True) == 3
    assert stream_index(menu, split, decoding=True, prefilling=False) == menu.groups - 1  # decode alone: all SMs
    assert stream_index(menu, split, decoding=False, prefilling=True) == 0  # prefill alone: all SMs
    assert stream_index(menu, split, decoding=False, prefilling=False) == 0


@pytest.mark.parametrize("split", [Split(60, 72), Split(64, 64), Split(True, 131), Split("64", 68), Split(0, 132)])
def test_a_split_off_the_menu_is_refused_naming_the_menu(split):
    backend = PdmuxSmGroups(sm_menu(*H100))
    with pytest.raises(InvalidSplit, match="not available: one of the SM splits") as error:
        backend.check(split)
    assert backend.menu.describe() in str(error.value)


def test_the_tuner_snaps_a_policy_split_to_the_nearest_pair_of_the_menu():
    menu = [[96, 36], [64, 68], [40, 92]]
    assert nearest_in_menu((3, 1), menu, 132) == (96, 36)
    assert nearest_in_menu((1, 1), menu, 132) == (64, 68)
    assert nearest_in_menu((1, 2), menu, 132) == (40, 92)
    assert nearest_in_menu((40, 92), menu, 132) == (40, 92)
    assert nearest_in_menu((2, 1), None, 4) == (2, 1)  # CPU: no menu, any split in range


def test_under_mps_the_tuner_turns_a_policy_share_into_prefills_percentage():
    menu = [[p, 100] for p in range(20, 100, 10)] + [[100, 100]]
    assert nearest_in_menu((60, 40), menu, 100) == (60, 100)  # prefill 60% of the device
    assert nearest_in_menu((3, 1), menu, 100) == (80, 100)  # 75%: a tie of 70 and 80, to the more even pair
    assert nearest_in_menu((100, 100), menu, 100) == (100, 100)  # unified, asked for, stays
    assert nearest_in_menu((5, 95), menu, 100) == (20, 100)


# -- the scheduler on fakes of CUDA and sgl_kernel -----------------------------------------------

class FakeStream:
    def __init__(self, name):
        self.name = name


class FakeSpatial:
    """sgl_kernel.spatial: one call splits the device into a green context and its remainder."""

    def __init__(self):
        self.splits: list[tuple[int, int, int]] = []

    def get_sm_available(self, gpu_id):
        return 132

    def create_greenctx_stream_by_value(self, prefill_sms, decode_sms, gpu_id):
        self.splits.append((prefill_sms, decode_sms, gpu_id))
        return FakeStream(f"green-{prefill_sms}"), FakeStream(f"green-rest-{decode_sms}")


class FakeMetrics:
    def __init__(self, labels):
        self.splits, self.switches = [], 0

    def record_split(self, prefill, decode):
        self.splits.append((prefill, decode))

    def record_switch(self, seconds):
        self.switches += 1


@pytest.fixture
def make_scheduler(monkeypatch, tmp_path):
    from engine.semipd import pdmux_owner

    spatial = FakeSpatial()
    monkeypatch.setitem(sys.modules, "sgl_kernel", types.SimpleNamespace(spatial=spatial))
    monkeypatch.setattr(torch.cuda, "Stream", lambda gpu_id=None: FakeStream("plain"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(pdmux_owner, "get_device", lambda: SimpleNamespace(gpu_id=0))
    monkeypatch.setattr(pdmux_owner, "get_serving", lambda: SimpleNamespace(served_model_name="m"))
    monkeypatch.setattr(pdmux_owner, "SemiPDMetrics", FakeMetrics)
    made = []

    def make(split: str | None = None):
        monkeypatch.setenv(settings.ENV_CONTROL, f"ipc://{tmp_path}/control-{len(made)}.sock")
        monkeypatch.setenv(settings.ENV_SPLIT, split or "")
        scheduler = object.__new__(pdmux_owner.PdmuxSemiPDScheduler)
        scheduler.tp_worker = SimpleNamespace(model_runner=SimpleNamespace(
            backends=[], update_decode_attn_backend=lambda index: scheduler.tp_worker.model_runner.backends.append(index)))
        scheduler.init_pdmux()
        made.append(scheduler)
        return scheduler, spatial

    yield make
    for scheduler in made:
        scheduler.control.sock.close(linger=0)


def running(size: int):
    return SimpleNamespace(is_empty=lambda: size == 0, batch_size=lambda: size)


def test_sglangs_stream_groups_are_built_from_the_menu(make_scheduler):
    scheduler, spatial = make_scheduler()
    menu = scheduler.partition.menu
    assert [(p, d) for p, d, _ in spatial.splits] == list(menu.pairs)  # one device split per pair
    assert scheduler.sm_counts == [(132, 0), *menu.pairs, (0, 132)]
    assert scheduler.split == Split(*min(menu.pairs, key=lambda pair: abs(pair[0] - pair[1])))


def test_each_step_runs_on_the_group_of_the_split_in_force_and_a_new_split_moves_it(make_scheduler):
    from sglang.srt.multiplex import pdmux_context

    scheduler, _ = make_scheduler("96,36")
    scheduler.split_prefill_batch = object()  # a prefill under way while 8 requests decode
    index, streams = scheduler.adjust_stream_groups(running(8))
    assert scheduler.sm_counts[index] == (96, 36) and streams[0].name == "green-96"
    assert pdmux_context.get_current_stream_idx() == index
    assert scheduler.tp_worker.model_runner.backends == [index]  # decode attention of that group

    reply = scheduler.handle_control({"op": "set_split", "prefill": 40, "decode": 92, "who": "tuner"})
    assert reply["ok"] and reply["split"] == {"prefill": 40, "decode": 92}
    assert reply["history"][-1]["who"] == "tuner" and reply["history"][-1]["old"] == "96,36"
    index, streams = scheduler.adjust_stream_groups(running(8))
    assert scheduler.sm_counts[index] == (40, 92) and streams[1].name == "green-rest-92"
    scheduler.split_prefill_batch = None
    index, _ = scheduler.adjust_stream_groups(running(8))
    assert scheduler.sm_counts[index] == (0, 132)  # nothing to prefill: decode has every SM
    assert scheduler.semipd_metrics.splits == [(96, 36), (40, 92)] and scheduler.semipd_metrics.switches == 1


def test_a_split_off_the_menu_gets_400_and_changes_nothing(make_scheduler):
    scheduler, _ = make_scheduler()
    before = scheduler.handle_control({"op": "get_split"})
    reply = scheduler.handle_control({"op": "set_split", "prefill": 66, "decode": 66})
    assert reply == {"ok": False, "status": 400, "error": reply["error"]} and "one of the SM splits" in reply["error"]
    after = scheduler.handle_control({"op": "get_split"})
    assert after["split"] == before["split"] and len(after["history"]) == len(before["history"]) == 1
    assert after["menu"] == [list(p) for p in scheduler.partition.menu.pairs] and after["unit"] == "SMs"


def test_the_split_travels_over_the_real_control_channel(make_scheduler):
    from engine.semipd.control_channel import control_request

    scheduler, _ = make_scheduler()
    endpoint = scheduler.control.sock.getsockopt_string(__import__("zmq").LAST_ENDPOINT)

    async def ask():
        pending = asyncio.ensure_future(control_request(endpoint, {"op": "set_split", "prefill": 96, "decode": 36}))
        for _ in range(200):  # the owner answers between its steps
            await asyncio.sleep(0.01)
            if scheduler.control.serve_pending(scheduler.handle_control):
                break
        return await pending

    reply = asyncio.run(ask())
    assert reply["ok"] and scheduler.split == Split(96, 36)


def test_a_split_at_start_off_the_menu_stops_the_start_naming_the_menu(make_scheduler):
    with pytest.raises(InvalidSplit, match="--split: split 20,112 is not available"):
        make_scheduler("20,112")


# -- the flags -----------------------------------------------------------------------------------

def test_pdmux_flags_are_added_and_the_users_kept():
    argv = settings.pdmux_argv(["--mem-fraction-static", "0.8"])
    assert argv[:2] == ["--mem-fraction-static", "0.8"]
    assert "--enable-pdmux" in argv and "--disable-overlap-schedule" in argv
    assert argv[argv.index("--chunked-prefill-size") + 1] == "-1"
    kept = settings.pdmux_argv(["--chunked-prefill-size", "-1", "--pp-size", "1"])
    assert kept.count("--chunked-prefill-size") == 1


@pytest.mark.parametrize("flags,named", [
    (["--chunked-prefill-size", "8192"], "--chunked-prefill-size 8192"),
    (["--chunked-prefill-size=512"], "--chunked-prefill-size 512"),
    (["--pp-size", "2"], "--pp-size 2"),
    (["--disaggregation-mode", "prefill"], "--disaggregation-mode prefill"),
    (["--enable-lora"], "--enable-lora"),
    (["--pdmux-config-path", "x.yaml"], "--pdmux-config-path x.yaml"),
])
def test_flags_pdmux_cannot_run_with_are_refused_by_name(flags, named):
    with pytest.raises(ValueError) as error:
        settings.pdmux_argv(flags)
    assert str(error.value).startswith(named + ": semi-pd on GPU runs on SGLang's PD multiplexing")


def test_cpu_only_flags_are_refused_on_gpu():
    with pytest.raises(ValueError, match="--lend-idle-cores, --repartition standby: CPU only"):
        settings.configure(None, 30000, lend_idle_cores=True, repartition="standby", device="cuda")


def test_serve_on_gpu_starts_semi_pd_on_pdmux_and_refuses_chunked_prefill(tiny_model):
    serve = [sys.executable, "-m", "cli.main", "serve", "--model", str(tiny_model), "--mode", "semi-pd",
             "--device", "cuda", "--dry-run"]
    out = subprocess.run(serve, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--enable-pdmux" in out.stdout.split() and "--disable-overlap-schedule" in out.stdout.split()
    refused = subprocess.run([*serve, "--chunked-prefill-size", "512"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--chunked-prefill-size 512: semi-pd on GPU" in refused.stderr
