"""Every SGLang seam exists as semipd uses it in the installed SGLang; a changed one is named."""

from __future__ import annotations

import pytest
import torch

from engine import sglang_seams
from engine.sglang_seams import PINNED, SEAMS, Seam, SeamChanged, check_seams, routed_zeros


def test_the_installed_sglang_is_the_pinned_one_and_every_seam_fits():
    assert sglang_seams.installed_version() == PINNED
    assert check_seams() == []
    assert {s.name for s in SEAMS} == {"launch", "scheduler class", "scheduler process", "scheduler loop",
                                       "forward injection", "row-parallel hooks", "HTTP app", "attention backend", "pdmux",
                                       "worker build"}


def test_a_seam_that_is_gone_or_lost_a_parameter_is_named():
    gone = Seam("scheduler loop", "sglang.srt.managers.scheduler.Scheduler.event_loop_that_never_was")
    lost = Seam("launch", "sglang.srt.entrypoints.http_server.launch_server", ("server_args", "no_such_param"))
    with pytest.raises(SeamChanged) as info:
        check_seams((gone, lost))
    text = str(info.value)
    assert f"built on {PINNED}" in text
    assert "seam 'scheduler loop': sglang.srt.managers.scheduler.Scheduler.event_loop_that_never_was is gone" in text
    assert "seam 'launch': sglang.srt.entrypoints.http_server.launch_server no longer takes no_such_param" in text


def test_another_release_whose_seams_fit_is_a_warning(monkeypatch):
    monkeypatch.setattr(sglang_seams, "installed_version", lambda: "9.9.9")
    (warning,) = check_seams((Seam("HTTP app", "sglang.srt.utils.auth.auth_level"),))
    assert "9.9.9 is not the pinned" in warning


def test_routed_zeros_replaces_only_what_the_route_takes():
    taken = torch.ones(4)

    def route(shape, dtype, device):
        return taken if shape == (4,) else None

    with routed_zeros(route):
        assert torch.zeros(4) is taken and torch.zeros((4,)) is taken
        other = torch.zeros(2, 3, dtype=torch.float64)
        assert other.shape == (2, 3) and other.dtype == torch.float64 and not other.any()
        assert torch.zeros(4, requires_grad=True) is not taken  # keyword arguments: torch's own
    assert torch.zeros(4) is not taken
