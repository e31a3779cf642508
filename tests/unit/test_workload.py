"""Workload SPEC strings: parsing, distributions, the Azure trace, and clear errors."""

import statistics
from pathlib import Path

import pytest

from loadtest.workload import (WorkloadError, load_azure_trace, mean_rate, parse_workload, prompt_tokens,
                            scale_rate)

TRACE = Path(__file__).resolve().parents[3] / "shared" / "data" / "azure_llm_2023_conv.csv"


def write_trace(path, rows):
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2023-11-16 18:15:{s:02d}.0000000,{c},{g}\n" for s, c, g in rows))
    return path


def test_trace_window_rate_and_length_scaling(tmp_path):
    path = write_trace(tmp_path / "t.csv", [(0, 100, 10), (2, 200, 20), (4, 300, 30), (6, 4000, 400)])
    requests = load_azure_trace(path, start=2, duration=5, rate_scale=2, len_scale=0.5, max_prompt=1000)
    assert [(r.arrival_s, r.prompt_len, r.output_len) for r in requests] == [(0, 100, 10), (1, 150, 15), (2, 1000, 200)]
    spec = parse_workload(f"trace:{path},start=2,duration=5,rate_scale=2,len_scale=0.5,max_prompt=1000")
    assert spec == requests


def test_the_shared_azure_trace_loads():  # ../shared/data sits beside the checkout, as in CI
    requests = parse_workload(f"trace:{TRACE},duration=60,len_scale=0.25")
    assert 100 < len(requests) < 600  # about 5.5 requests/s on average over the hour
    assert 1 <= min(r.prompt_len for r in requests) and requests[0].arrival_s == 0


def test_synthetic_arrivals_have_the_asked_rate_and_burstiness():
    poisson = parse_workload("poisson:rate=4,prompt=100,output=uniform(10,20),count=4000,seed=1")
    gaps = [b.arrival_s - a.arrival_s for a, b in zip(poisson, poisson[1:])]
    assert mean_rate(poisson) == pytest.approx(4, rel=0.05)
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(1, abs=0.08)
    assert all(10 <= r.output_len <= 20 and r.prompt_len == 100 for r in poisson)
    bursty = parse_workload("gamma:rate=4,cv=3,prompt=100,output=10,count=4000,seed=1")
    gaps = [b.arrival_s - a.arrival_s for a, b in zip(bursty, bursty[1:])]
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(3, rel=0.15)
    lognormal = parse_workload("poisson:rate=1,prompt=lognormal(200,0.5),output=5,count=4000")
    assert statistics.mean(r.prompt_len for r in lognormal) == pytest.approx(200, rel=0.05)


def test_lengths_fitted_to_a_trace(tmp_path):
    path = write_trace(tmp_path / "t.csv", [(0, 100, 10), (1, 300, 30)])
    requests = parse_workload(f"gamma:rate=2,cv=2,prompt=trace({path},0.5),output=trace({path}),count=200")
    assert {r.prompt_len for r in requests} == {50, 150}
    assert {r.output_len for r in requests} == {10, 30}


def test_same_seed_same_workload_and_rate_scaling_keeps_requests():
    a = parse_workload("poisson:rate=2,prompt=uniform(1,50),output=5,count=50,seed=3")
    assert a == parse_workload("poisson:rate=2,prompt=uniform(1,50),output=5,count=50,seed=3")
    faster = scale_rate(a, 2.0)
    assert mean_rate(faster) == pytest.approx(2 * mean_rate(a))
    assert [r.prompt_len for r in faster] == [r.prompt_len for r in a]


def test_shared_prefix_groups_share_their_prefix_tokens():
    requests = parse_workload("shared-prefix:groups=3,per_group=4,prefix=50,question=8,output=4,rate=10")
    assert len(requests) == 12 and sorted({r.prefix_group for r in requests}) == [0, 1, 2]
    prompts = [prompt_tokens(i, r, vocab=1000) for i, r in enumerate(requests)]
    assert all(len(p) == 58 for p in prompts)
    by_group = {}
    for r, p in zip(requests, prompts):
        by_group.setdefault(r.prefix_group, []).append(p)
    for group in by_group.values():
        assert all(p[:50] == group[0][:50] for p in group) and len({tuple(p[50:]) for p in group}) == len(group)
    assert by_group[0][0][:50] != by_group[1][0][:50]


def test_concat_puts_parts_one_after_another():
    first, second = "poisson:rate=10,prompt=100,output=10,count=20", "poisson:rate=1,prompt=2000,output=5,count=5"
    parts = parse_workload(first), parse_workload(second)
    both = parse_workload(f"concat:{first};{second}")
    assert [r.prompt_len for r in both] == [100] * 20 + [2000] * 5
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(both, both[1:]))
    assert both[20].arrival_s == pytest.approx(parts[0][-1].arrival_s + parts[1][0].arrival_s)


@pytest.mark.parametrize("spec, message", [
    ("nope:rate=1", "unknown workload kind 'nope'"),
    ("poisson:rate=0,prompt=5,output=5", "rate=0.0 is out of range"),
    ("poisson:rate=1,prompt=5", "missing output="),
    ("poisson:rate=1,prompt=uniform(9,3),output=5", "1 <= a <= b"),
    ("poisson:rate=1,prompt=abc,output=5", "not a length distribution"),
    ("poisson:rate=1,prompt=5,output=5,colour=red", "unknown field(s) colour"),
    ("gamma:rate=1,prompt=5,output=5", "missing cv="),
    ("trace:/no/such/file.csv", "cannot read trace"),
    ("concat:poisson:rate=1,prompt=5,output=5;", "an empty part"),
    ("concat:poisson:rate=1,prompt=5,output=5;poisson:rate=1,prompt=5", "missing output="),
])
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(WorkloadError, match=__import__("re").escape(message)):
        parse_workload(spec)


def test_bad_trace_contents(tmp_path):
    missing = tmp_path / "m.csv"
    missing.write_text("TIMESTAMP,ContextTokens\n2023-11-16 18:15:00,5\n")
    with pytest.raises(WorkloadError, match="missing column.*GeneratedTokens"):
        load_azure_trace(missing)
    negative = write_trace(tmp_path / "n.csv", [(0, 5, 5), (1, -3, 5)])
    with pytest.raises(WorkloadError, match="line 3: negative length"):
        load_azure_trace(negative)
    with pytest.raises(WorkloadError, match="no requests"):
        load_azure_trace(write_trace(tmp_path / "e.csv", [(0, 5, 5)]), start=100)
