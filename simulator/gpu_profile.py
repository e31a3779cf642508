"""A GPU profile: a GPU's datasheet numbers and the operator and collective curves fitted to
Vidur's measurements of one model on it, written by `semipd calibrate-model --from-vidur` and
checked against measurements by `semipd validate-profile`.

Fit only on measured profiles; another GPU is predicted from its datasheet through the same
curves (simulator/operator_model.py), and the error is reported separately for each.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from simulator.hardware_profiles import HARDWARE, MODELS, Hardware
from simulator.network_model import CollectiveFit, collective_errors, fit_collectives
from simulator.operator_model import (GEMMS, OperatorFit, error_row, error_summary, fit_operator,
                                      operator_work, relative_errors)
from simulator.vidur_profiles import OPERATORS, LayerShape, OperatorTime, read_collectives, read_operators


class ProfileConfigError(ValueError):
    pass


@dataclass(frozen=True)
class GpuProfile:
    hardware: Hardware           # the GPU it was fitted on
    model: str
    shape: LayerShape
    operators: tuple[OperatorFit, ...]
    collectives: tuple[CollectiveFit, ...] = ()
    source: str = ""
    fit_error: dict = field(default_factory=dict)

    def operator(self, op: str) -> OperatorFit:
        for fit in self.operators:
            if fit.op == op:
                return fit
        raise KeyError(f"the profile has no fit for {op!r}")

    def predict(self, samples: list[OperatorTime], on: Hardware) -> list[dict]:
        rows = []
        for op in sorted({s.op for s in samples}, key=OPERATORS.index):
            rows += relative_errors(self.operator(op), self.shape, samples, on)
        return rows

    def save(self, path: str | Path) -> None:
        data = asdict(self)
        for fit in data["operators"]:  # JSON keys are strings
            fit["residuals"] = {str(tp): curve for tp, curve in fit["residuals"].items()}
        Path(path).write_text(json.dumps({"kind": "gpu", **data}, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "GpuProfile":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ProfileConfigError(f"cannot read the GPU profile {path}: {exc}") from None
        if data.pop("kind", None) != "gpu":
            raise ProfileConfigError(f"{path} is not a GPU profile written by `semipd calibrate-model --from-vidur`")
        try:
            operators = tuple(OperatorFit(f["op"], f["kind"], tuple(f["params"]), f["fitted_on"],
                                          {int(tp): (tuple(c[0]), tuple(c[1])) for tp, c in f["residuals"].items()})
                              for f in data.pop("operators"))
            return cls(hardware=Hardware(**data.pop("hardware")), shape=LayerShape(**data.pop("shape")),
                       operators=operators, collectives=tuple(CollectiveFit(**c) for c in data.pop("collectives")),
                       **data)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ProfileConfigError(f"{path} is a damaged GPU profile ({type(exc).__name__}: {exc})") from None


def hardware_named(name: str) -> Hardware:
    if name not in HARDWARE:
        raise ProfileConfigError(f"unknown GPU {name!r}; valid: {', '.join(HARDWARE)}")
    return HARDWARE[name]


def gpu_of_path(path: str | Path) -> Hardware:
    """The named GPU a Vidur directory is for, from its path (`.../compute/a100/...` is the A100)."""
    parts = [p.lower() for p in Path(path).resolve().parts]
    for name, hw in HARDWARE.items():
        short = name.split("-")[0]
        if any(p == short or p.startswith(short + "_") or p == name for p in parts):
            return hw
    raise ProfileConfigError(f"cannot tell which GPU {path} was measured on; give --gpu "
                             f"({', '.join(HARDWARE)})")


def calibrate_from_vidur(compute_dir: str | Path, model: str, gpu: Hardware,
                         network_dir: str | Path | None = None) -> GpuProfile:
    shape, samples = read_operators(compute_dir)
    check_model(model, shape, compute_dir)
    operators = tuple(fit_operator(op, shape, samples, gpu) for op in OPERATORS if any(s.op == op for s in samples))
    collectives = tuple(fit_collectives(read_collectives(network_dir))) if network_dir else ()
    profile = GpuProfile(gpu, model, shape, operators, collectives,
                         source=f"fitted to Vidur's {gpu.name} measurements of {model}: {compute_dir}"
                                + (f" and {network_dir}" if network_dir else ""))
    fit_error = {"operators": error_summary(profile.predict(samples, gpu))}
    if network_dir:
        fit_error["collectives"] = error_summary(collective_errors(list(collectives), read_collectives(network_dir)))
    return GpuProfile(**{**profile.__dict__, "fit_error": fit_error})


def check_model(model: str, shape: LayerShape, compute_dir) -> None:
    """The simulator knows the model (layers, weights, KV) and its shape is the measured one."""
    if model not in MODELS:
        raise ProfileConfigError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
    m = MODELS[model]
    if (m.hidden, m.heads, m.kv_heads) != (shape.hidden, shape.heads, shape.kv_heads):
        raise ProfileConfigError(f"{compute_dir} measured another model than {model} (hidden {shape.hidden}, "
                                 f"{shape.heads} heads, {shape.kv_heads} KV heads; {model} has {m.hidden}, "
                                 f"{m.heads}, {m.kv_heads})")


def roofline_seconds(op: str, shape: LayerShape, tokens: int, tp: int, hw: Hardware) -> float:
    """The simulator's plain roofline for one operator (GEMMs only; it has no elementwise
    operators, which therefore predict 0): the baseline the fitted curves replace."""
    if op not in GEMMS:
        return 0.0
    work = operator_work(op, shape, tokens, tp)
    return max(work.compute / (hw.peak_flops * hw.compute_efficiency),
               work.bytes / (hw.mem_bandwidth * hw.bandwidth_efficiency))


def validate(hardware: str, compute_dir: str | Path, model: str, gpu: Hardware | None = None) -> dict:
    """Predicted against measured per operator, token count and TP for `model` on the GPU
    measured in `compute_dir`: from a profile file (its curves; the residuals only on the GPU it
    was fitted on) or from a named GPU's plain roofline."""
    shape, samples = read_operators(compute_dir)
    check_model(model, shape, compute_dir)
    if hardware.endswith(".json"):
        gpu = gpu or gpu_of_path(compute_dir)
        profile = GpuProfile.load(hardware)
        if profile.model != model:
            raise ProfileConfigError(f"{hardware} was fitted to another model ({profile.model}), not {model}")
        rows = profile.predict(samples, gpu)
        how = (f"fitted curves of {hardware} ({profile.hardware.name})"
               + (", with its residuals" if gpu.name == profile.hardware.name else
                  f", carried to the {gpu.name} through its datasheet"))
    else:
        gpu = gpu or hardware_named(hardware)
        rows = [error_row(s, roofline_seconds(s.op, shape, s.tokens, s.tp, gpu)) for s in samples]
        how = f"the plain roofline of {gpu.name} (GEMMs only)"
    return {"gpu": gpu.name, "predicted_by": how, **error_summary(rows), "rows": rows}
