"""stack/fleet.py's plain parts: how cores or GPUs are shared out, the engines' and the router's
command lines; semipd up's restarts and Prometheus configuration."""

import pytest

from stack.fleet import device_groups, fleet_devices, router_command, semipd_engine


def test_cores_are_shared_out_in_order_as_evenly_as_they_go():
    assert device_groups([0, 1], 2) == [[0], [1]]
    assert device_groups([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert device_groups([4, 5, 6], 1) == [[4, 5, 6]]
    for engines in (0, 3):
        with pytest.raises(ValueError, match=f"--engines {engines} is out of range 1..2"):
            device_groups([0, 1], engines)


def test_on_a_gpu_host_engines_share_out_the_visible_gpus(tmp_path):
    import os

    driver = tmp_path / "gpus"
    assert fleet_devices(driver, {}) == ("core", sorted(os.sched_getaffinity(0)))  # no driver: cores
    for bus in ("0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0"):
        (driver / bus).mkdir(parents=True)
    assert fleet_devices(driver, {}) == ("GPU", [0, 1, 2, 3])
    assert fleet_devices(driver, {"CUDA_VISIBLE_DEVICES": "2,3"}) == ("GPU", [2, 3])  # the engines get 2 and 3
    with pytest.raises(ValueError, match="not UUIDs"):
        fleet_devices(driver, {"CUDA_VISIBLE_DEVICES": "GPU-5d2c"})
    groups = device_groups([0, 1, 2, 3], 2, "GPU")
    assert groups == [[0, 1], [2, 3]]
    command = semipd_engine(groups[1], "127.0.0.1", 30002, (), "GPU")
    assert command[:2] == ["env", "CUDA_VISIBLE_DEVICES=2,3"] and "taskset" not in command
    assert semipd_engine([1], "127.0.0.1", 30002)[:3] == ["taskset", "-c", "1"]
    with pytest.raises(ValueError, match="each engine needs a GPU of its own"):
        device_groups([0], 2, "GPU")


def test_the_router_command_parses_with_the_installed_router():
    command = router_command(["http://127.0.0.1:30001", "http://127.0.0.1:30002"], "127.0.0.1", 30000,
                             "round-robin", 29000, "k3y")
    assert command[command.index("--policy") + 1] == "round_robin"
    assert command[command.index("--control-plane-api-keys") + 1].endswith(":admin:k3y")
    with pytest.raises(ValueError, match="valid: cache-aware, round-robin"):
        router_command([], "127.0.0.1", 30000, "random", 29000, None)
    # the installed sglang-router takes every flag we give it (its parser exits 2 on an unknown one)
    from sglang_router.launch_router import parse_router_args

    parse_router_args(command[command.index("--worker-urls"):])



@pytest.fixture
def two_core_stack(tmp_path, monkeypatch):
    """`semipd up --engines 2`'s parts, not started, as on a machine of two cores."""
    import os

    from stack.up import Stack

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    return Stack(tmp_path, "127.0.0.1", 40000, 41000, 42000, engines=2, router_metrics_port=29500,
                 prometheus_port=49090)


def test_semipd_up_starts_a_fleet_engine_that_exited_again_three_times_at_most(two_core_stack):
    from stack.up import MAX_RESTARTS

    stack = two_core_stack
    assert stack.engines is stack.fleet.engines
    for engine in stack.engines:  # a stand-in that exits at once, where an engine would run
        engine.command = ["true"]
    stack.parts = [(f"engine {i}", e.launch()) for i, e in enumerate(stack.engines)]
    first = stack.engines[1]
    for restart in range(1, MAX_RESTARTS + 1):
        stack.parts[1][1].process.wait(10)
        assert stack.restart_engine("engine 1")
        assert stack.engines[1] is not first and stack.parts[1] == ("engine 1", stack.engines[1])
        assert stack.engines[1].command == ["true"] and stack.engines[1].log_path.name == f"engine-1.{restart}.log"
    assert not stack.restart_engine("engine 1"), "an engine that keeps dying stops the stack"
    assert not stack.restart_engine("dashboard") and not stack.restart_engine("tuner 0")


def test_prometheus_scrapes_every_engine_tuner_and_the_router_and_the_dashboard_shows_them_all(two_core_stack):
    import yaml

    stack = two_core_stack
    config = yaml.safe_load((stack.run_dir / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets == {"semipd-engine": ["127.0.0.1:40001", "127.0.0.1:40002"],
                       "semipd-tuner": ["127.0.0.1:41000", "127.0.0.1:41001"],
                       "semipd-router": ["127.0.0.1:29500"]}
    assert "--web.listen-address=127.0.0.1:49090" in stack.prometheus.command
    dashboard = stack.dashboard.command
    assert [a for a in dashboard if a.startswith("--tuner=")] == ["--tuner=http://127.0.0.1:41000",
                                                                  "--tuner=http://127.0.0.1:41001"]
    assert "--router-metrics=http://127.0.0.1:29500/metrics" in dashboard
