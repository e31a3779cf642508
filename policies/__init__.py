"""Partitioning policies: pure decisions over observations. No I/O, no clock, no torch.

Every policy is a module with the same small interface (like Optuna's samplers):

    DEFAULTS: dict[str, float]                  its parameters and their default values
    SPACE: dict[str, tuple[float, float, str]]  search range per parameter: (low, high, "int"|"float")
    decide(obs: Observation, params: dict, state: dict) -> Decision

`decide` gets the window just observed and the state it returned last time (an empty dict on the
first call) and returns a Decision: the split to apply (or None to keep the one in force), a
reason for the operator, and its next state. The live tuner and the simulator call it the same way.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from policies.observation import Decision, Histogram, Observation, quantile

POLICIES = ("static", "semipd", "threshold", "mpc")

__all__ = ["Decision", "Histogram", "Observation", "POLICIES", "get_policy", "load_params", "quantile"]


class UnknownPolicy(ValueError):
    pass


def get_policy(name: str):
    """The policy module called `name`; UnknownPolicy lists the valid names."""
    if name not in POLICIES:
        raise UnknownPolicy(f"unknown policy {name!r}; valid policies: {', '.join(POLICIES)}")
    return importlib.import_module(f"policies.{name}")


def load_params(name: str, path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """A policy's parameters: its defaults, updated from a JSON file (as `semipd search` writes:
    either the parameters themselves or {"params": {...}}) and then from `overrides`. Unknown
    names and values outside SPACE are errors that name the valid range."""
    policy = get_policy(name)
    params = dict(policy.DEFAULTS)
    given = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read parameters for {name} from {path}: {exc}") from None
        given |= data.get("params", data) if isinstance(data, dict) else {}
    given |= overrides or {}
    for key, value in given.items():
        if key not in params:
            raise ValueError(f"policy {name} has no parameter {key!r}; its parameters: {', '.join(params)}")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"parameter {key} of {name} must be a number, got {value!r}")
        if key in policy.SPACE:
            low, high, kind = policy.SPACE[key]
            if not low <= value <= high:
                raise ValueError(f"parameter {key}={value} of {name} is out of range [{low}, {high}]")
            value = int(value) if kind == "int" else float(value)
        params[key] = value
    return params
