"""The GPU twin's operator and collective curves, fitted to Vidur's measured profiles."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from simulator.gpu_profile import GpuProfile, calibrate_from_vidur, gpu_of_path, validate
from simulator.hardware_profiles import HARDWARE
from simulator.network_model import collective_errors, fit_collectives
from simulator.operator_model import error_summary
from simulator.vidur_profiles import ProfileError, read_collectives, read_operators

PROFILES = Path(__file__).resolve().parents[3] / "shared" / "data" / "gpu-profiles" / "vidur"
A100 = PROFILES / "compute" / "a100" / "meta-llama"
A40_LLAMA2 = PROFILES / "compute" / "a40" / "meta-llama" / "Llama-2-7b-hf"
A100_LLAMA2 = A100 / "Llama-2-7b-hf"


@pytest.fixture(scope="module")
def llama2_a100():
    return calibrate_from_vidur(A100_LLAMA2, "llama-2-7b", HARDWARE["a100-80gb"])


@pytest.mark.parametrize("directory, model", [("Llama-2-7b-hf", "llama-2-7b"), ("Meta-Llama-3-8B", "llama-3-8b"),
                                              ("Meta-Llama-3-70B", "llama-3-70b")])
def test_fitted_curves_reproduce_the_a100_points_they_came_from(directory, model):
    profile = calibrate_from_vidur(A100 / directory, model, HARDWARE["a100-80gb"])
    error = profile.fit_error["operators"]
    assert error["median_rel_error"] <= 0.05, error
    for op in ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj"):
        assert error["per_operator"][op]["median_rel_error"] <= 0.05, (op, error["per_operator"][op])


def test_the_a40_is_predicted_from_its_datasheet_through_the_a100_curves(llama2_a100, tmp_path):
    path = tmp_path / "a100.json"
    llama2_a100.save(path)
    report = validate(str(path), A40_LLAMA2, "llama-2-7b")
    assert report["gpu"] == "a40" and "datasheet" in report["predicted_by"]
    assert report["median_rel_error"] <= 0.10, report["per_operator"]
    # the A100's residual curves stay on the A100: the A40 prediction is the curves' alone
    bare = replace(llama2_a100, operators=tuple(replace(f, residuals={}) for f in llama2_a100.operators))
    _, a40 = read_operators(A40_LLAMA2)
    assert bare.predict(a40, HARDWARE["a40"]) == llama2_a100.predict(a40, HARDWARE["a40"])
    assert bare.predict(a40, HARDWARE["a100-80gb"]) != llama2_a100.predict(a40, HARDWARE["a100-80gb"])
    plain = validate("a40", A40_LLAMA2, "llama-2-7b")  # the roofline the curves replace: no elementwise operators
    assert plain["median_rel_error"] > report["median_rel_error"]
    assert plain["per_operator"]["add"]["median_rel_error"] == pytest.approx(1.0)


def test_a_gpu_profile_round_trips_through_its_file(llama2_a100, tmp_path):
    path = tmp_path / "profile.json"
    llama2_a100.save(path)
    loaded = GpuProfile.load(path)
    assert loaded == llama2_a100
    _, samples = read_operators(A100_LLAMA2)
    assert loaded.predict(samples, HARDWARE["a100-80gb"]) == llama2_a100.predict(samples, HARDWARE["a100-80gb"])


def test_the_commands_fit_and_validate_a_profile(tmp_path):
    out = tmp_path / "a100-llama2.json"
    semipd = [sys.executable, "-m", "cli.main"]
    made = subprocess.run([*semipd, "calibrate-model", "--from-vidur", str(A100_LLAMA2), "--model", "llama-2-7b",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert "mlp_up_proj" in made.stdout and out.exists()
    checked = subprocess.run([*semipd, "validate-profile", "--hardware", str(out), "--vidur", str(A40_LLAMA2),
                              "--model", "llama-2-7b", "--json"], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert {"median_rel_error", "max_rel_error", "per_operator", "rows"} <= set(report)
    assert {"op", "tokens", "tp", "measured_ms", "predicted_ms", "rel_error"} <= set(report["rows"][0])
    wrong = subprocess.run([*semipd, "validate-profile", "--hardware", str(out), "--vidur",
                            str(A100 / "Meta-Llama-3-70B"), "--model", "llama-3-70b"],
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "another model (llama-2-7b)" in wrong.stderr


def test_bad_inputs_get_clear_errors(tmp_path):
    not_vidur = tmp_path / "mlp.csv"
    not_vidur.write_text("a,b\n1,2\n")
    with pytest.raises(ProfileError, match="not a Vidur mlp.csv"):
        read_operators(tmp_path)
    with pytest.raises(ValueError, match="cannot tell which GPU"):
        gpu_of_path(tmp_path)
    with pytest.raises(ValueError, match="unknown GPU 'b200'; valid: a100-80gb"):
        validate("b200", A100_LLAMA2, "llama-2-7b")
    with pytest.raises(ValueError, match="measured another model than llama-3-8b"):
        calibrate_from_vidur(A100_LLAMA2, "llama-3-8b", HARDWARE["a100-80gb"])
    with pytest.raises(ProfileError, match="no all_reduce.csv"):
        read_collectives(tmp_path)
    damaged = tmp_path / "damaged.json"
    damaged.write_text('{"kind": "gpu", "model": "llama-2-7b"}')
    with pytest.raises(ValueError, match="damaged GPU profile"):
        GpuProfile.load(damaged)


@pytest.mark.parametrize("topology", ["a100_dgx", "a100_pairwise_nvlink"])
def test_collectives_fit_latency_and_bus_bandwidth_per_topology(topology):
    samples = read_collectives(PROFILES / "network" / topology)
    fits = fit_collectives(samples)
    error = error_summary(collective_errors(fits, samples))
    assert error["median_rel_error"] <= 0.15, error["per_operator"]
    within = [f for f in fits if f.collective == "all_reduce" and f.workers == 2 and f.devices_per_node == 2]
    across = [f for f in fits if f.collective == "all_reduce" and f.workers == 2 and f.devices_per_node == 1]
    if within and across:  # NVLink inside a node is faster than the network between nodes
        assert within[0].bus_bandwidth > 5 * across[0].bus_bandwidth


def test_the_simulator_takes_a_gpu_profile_as_hardware(llama2_a100, tmp_path):
    from simulator.perf_model import ConfigError, Work, build_model, prefill_work

    path = tmp_path / "a100.json"
    llama2_a100.save(path)
    fitted, plain = build_model(str(path), None, 1), build_model("a100-80gb", "llama-2-7b", 1)
    assert fitted.measured is not None and fitted.model.name == "llama-2-7b"
    for work in (prefill_work([(2048, 0)]), Work(decode_batch=32, decode_context=32 * 1000)):
        t_fitted, t_plain = fitted.step_time(work, 1.0), plain.step_time(work, 1.0)
        assert 0.5 * t_plain < t_fitted < 2 * t_plain  # the same order: the fitted curves add what the roofline lacks
        assert fitted.step_time(work, 0.5) > t_fitted  # fewer SMs: slower
    # the measured curves are longer than the plain roofline at 2048 prefill tokens (norms, rotary, adds)
    assert fitted.step_time(prefill_work([(2048, 0)]), 1.0) > plain.step_time(prefill_work([(2048, 0)]), 1.0)
    with pytest.raises(ConfigError, match="fitted to llama-2-7b, not llama-3-8b"):
        build_model(str(path), "llama-3-8b", 1)


def test_distserves_fitted_latency_models_are_step_time_models():
    from simulator.distserve_profiles import distserve_model
    from simulator.perf_model import ConfigError, Work, prefill_work

    directory = PROFILES.parent / "distserve"
    fit = json.loads((directory / "profiler-a100-80g.distserve.json").read_text())["facebook/opt-13b"]["1"]
    model = distserve_model(directory, "distserve", "opt-13b", 1)
    a, b, c = fit["prefill"]
    assert model.step_time(prefill_work([(1000, 0)]), 1.0) * 1e3 == pytest.approx(a + b * 1000 + c * 1000 ** 2)
    for batch, key in ((8, "decoding_smallbs"), (200, "decoding_largebs")):
        a, b, c = fit[key]
        assert model.step_time(Work(decode_batch=batch, decode_context=batch * 500), 1.0) * 1e3 == \
            pytest.approx(a + b * batch * 500 + c * batch)
    assert model.kv_capacity == 66144  # max_num_tokens.csv, OPT-13B TP1 PP1
    vllm = distserve_model(directory, "vllm", "opt-13b", 1)
    assert vllm.step_time(prefill_work([(1000, 0)]), 1.0) != model.step_time(prefill_work([(1000, 0)]), 1.0)
    with pytest.raises(ConfigError, match="not 3"):
        distserve_model(directory, "vllm", "opt-13b", 3)
    with pytest.raises(ConfigError, match="DistServe fits no 'llama-3-8b'"):
        distserve_model(directory, "vllm", "llama-3-8b", 1)
