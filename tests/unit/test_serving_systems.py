"""Serving systems as named variants (engine overheads, limits, coupling) and the papers' datasets."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from loadtest.paper_datasets import DATASETS, dataset_requests
from loadtest.workload import Request, WorkloadError, parse_workload
from simulator.perf_model import Fitted, build_model
from simulator.serving_systems import SYSTEMS, EngineOverheads, get_system
from simulator.simulation import Simulation, to_records

TRACE = Path(__file__).resolve().parents[3] / "shared" / "data" / "azure_llm_2023_conv.csv"


def simple(units=2, kv=100_000) -> Fitted:
    """1 ms per prefill token, 10 ms per decode step on half the device (flat above it)."""
    return Fitted(units=units, kv_capacity=kv, chunk_size=4096, max_batch=64,
                  prefill=((0.5, (0.0, 0.001, 0.0, 0.0)),), decode=((0.5, (0.01, 0.0, 0.0)),))


def lone_request(overheads: EngineOverheads):
    (record,) = to_records(Simulation(simple(), "unified", batching="prefill-first", overheads=overheads)
                           .run([Request(0.0, 100, 11)]))
    return record


def test_engine_time_is_added_to_each_step_or_hidden_behind_it():
    plain = lone_request(EngineOverheads())
    assert (plain.ttft_s, plain.tpot_s) == pytest.approx((0.100, 0.010))
    serial = lone_request(EngineOverheads(per_step_s=0.005, per_seq_s=0.001))
    assert (serial.ttft_s, serial.tpot_s) == pytest.approx((0.106, 0.016))  # + 5 ms + 1 ms for its one sequence
    per_token = lone_request(EngineOverheads(per_context_token_s=1e-5))
    assert per_token.ttft_s == pytest.approx(0.101)  # 100 prompt tokens
    assert lone_request(EngineOverheads(per_step_s=0.005, hidden=True)).tpot_s == pytest.approx(0.010)
    assert lone_request(EngineOverheads(per_step_s=0.020, hidden=True)).tpot_s == pytest.approx(0.020)


def test_an_asynchronous_semi_pd_prefill_does_not_wait_for_the_decode_step():
    # decode steps of 10 ms run from 0.10; B arrives at 0.103, inside the first.
    requests = [Request(0.0, 100, 50), Request(0.103, 55, 2)]
    coupled = Simulation(simple(), "semi-pd", split=(1, 1)).run(requests)[1]
    free = Simulation(simple(), "semi-pd", split=(1, 1), coupled=False).run(requests)[1]
    assert coupled.first_token == pytest.approx(0.17)  # starts at 0.11, ends 0.165, leaves at 0.17
    assert free.first_token == pytest.approx(0.16)     # starts at 0.103, ends 0.158, leaves at 0.16


def test_a_decode_instance_takes_no_more_context_than_its_cap():
    requests = [Request(0.0, 600, 20), Request(0.0, 600, 20)]
    capped = Simulation(simple(), "disagg", link_bandwidth=1e12, max_decode_tokens=1000).run(requests)
    free = Simulation(simple(), "disagg", link_bandwidth=1e12).run(requests)
    # uncapped, both decode together; capped, the second waits for the first to finish
    assert abs(free[0].finish - free[1].finish) < 0.011
    assert capped[1].finish - capped[0].finish > 0.15
    assert capped[1].first_token == pytest.approx(free[1].first_token)  # prefill is not held up
    # on one device (semi-PD), the request is held back from prefill instead
    semipd = Simulation(simple(), "semi-pd", split=(1, 1), max_decode_tokens=1000).run(requests)
    assert semipd[1].first_token > semipd[0].finish


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_more_engine_time_never_makes_a_system_faster(name):
    variant = SYSTEMS[name]
    model = build_model("a100-80gb", "llama-3-8b")
    workload = parse_workload("poisson:rate=12,prompt=lognormal(300,0.8),output=lognormal(200,0.6),count=400,seed=3")
    means = []
    for factor in (0.0, 1.0, 20.0):  # (hidden engine time shows only once it outlasts the GPU step)
        overheads = replace(variant.overheads, per_step_s=variant.overheads.per_step_s * factor,
                            per_context_token_s=variant.overheads.per_context_token_s * factor)
        options = variant.options(overheads=overheads)
        records = to_records(Simulation(model, options.pop("system"), **options).run(workload))
        assert all(r.error is None for r in records)
        means.append(sum(r.e2e_s for r in records) / len(records))
    assert means[0] <= means[1] + 1e-9 <= means[2] + 2e-9
    assert means[0] < means[2]


def test_every_variant_names_its_sources_and_an_unknown_one_is_refused():
    for variant in SYSTEMS.values():
        assert variant.sources and variant.description
        assert variant.overheads.per_step_s == 0 or variant.overheads.source
    with pytest.raises(ValueError, match="unknown serving system 'vllm'; valid: vllm-0.6-default"):
        get_system("vllm")


@pytest.mark.parametrize("name", list(DATASETS))
def test_a_papers_dataset_has_its_published_means_within_its_filter(name):
    shape = DATASETS[name]
    requests = dataset_requests(name, str(TRACE), rate=5.0, count=20_000, seed=1)
    prompt = sum(r.prompt_len for r in requests) / len(requests)
    output = sum(r.output_len for r in requests) / len(requests)
    assert prompt == pytest.approx(shape.prompt_mean, rel=0.04)
    assert output == pytest.approx(shape.output_mean, rel=0.04)
    assert all(shape.max_prompt is None or r.prompt_len <= shape.max_prompt for r in requests)
    assert all(shape.max_total is None or r.prompt_len + r.output_len <= shape.max_total for r in requests)
    rate = len(requests) / requests[-1].arrival_s
    assert rate == pytest.approx(5.0, rel=0.05)


def test_the_dataset_spec_builds_requests_and_names_bad_input():
    requests = parse_workload(f"dataset:humaneval,trace={TRACE},rate=2,count=50,seed=4")
    assert len(requests) == 50
    with pytest.raises(WorkloadError, match="unknown dataset 'sharegpt'; valid: sharegpt-distserve"):
        parse_workload(f"dataset:sharegpt,trace={TRACE},rate=2")
    with pytest.raises(WorkloadError, match="missing trace="):
        parse_workload("dataset:humaneval,rate=2")
