"""stack/fleet.py's plain parts: how cores are shared out, and the router's command line."""

import pytest

from stack.fleet import core_groups, router_command


def test_cores_are_shared_out_in_order_as_evenly_as_they_go():
    assert core_groups([0, 1], 2) == [[0], [1]]
    assert core_groups([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert core_groups([4, 5, 6], 1) == [[4, 5, 6]]
    for engines in (0, 3):
        with pytest.raises(ValueError, match=f"--engines {engines} is out of range 1..2"):
            core_groups([0, 1], engines)


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
