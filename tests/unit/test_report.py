"""Report arithmetic against hand-computed values on a fixed set of records (no server)."""

import json
import math

import pytest

from loadtest.load_generator import RequestRecord
from loadtest.report import goodput, percentile, summarize, write_records


def rec(ttft, e2e, n, error=None):
    times = [ttft + i * (e2e - ttft) / max(n - 1, 1) for i in range(n)]
    return RequestRecord(prompt_len=10, max_tokens=n, output_len=n, ttft_s=ttft, e2e_s=e2e,
                         token_times_s=times, error=error)


# TPOTs: (1.1-0.1)/10 = 0.1, (0.7-0.2)/5 = 0.1, (2.3-0.3)/4 = 0.5, (0.4-0.4)/... n=1 -> None
RECORDS = [rec(0.1, 1.1, 11), rec(0.2, 0.7, 6), rec(0.3, 2.3, 5), rec(0.4, 0.4, 1),
           RequestRecord(prompt_len=10, max_tokens=5, error="HTTP 500: boom")]


def test_counts_and_percentiles_match_hand_computation():
    s = summarize(RECORDS, ttft_slo_s=0.25, tpot_slo_s=0.2, duration_s=10.0)
    assert (s["requests"], s["completed"], s["failed"]) == (5, 4, 1)
    # TTFTs 0.1 0.2 0.3 0.4: linear-interpolated p50 = 0.25, p90 = 0.3 + 0.7 * 0.1 = 0.37
    assert s["ttft_p50_s"] == pytest.approx(0.25)
    assert s["ttft_p90_s"] == pytest.approx(0.37)
    assert s["ttft_mean_s"] == pytest.approx(0.25)
    # TPOTs 0.1 0.1 0.5 (the one-token request has none): p50 0.1, p90 0.1 + 0.8 * 0.4 = 0.42
    assert s["tpot_p50_s"] == pytest.approx(0.1)
    assert s["tpot_p90_s"] == pytest.approx(0.42)
    assert s["e2e_mean_s"] == pytest.approx((1.1 + 0.7 + 2.3 + 0.4) / 4)
    assert s["throughput_rps"] == pytest.approx(0.4)
    assert s["output_tokens_per_s"] == pytest.approx(2.3)


def test_attainment_counts_failed_requests_as_misses():
    s = summarize(RECORDS, ttft_slo_s=0.25, tpot_slo_s=0.2)
    # TTFT met: r0, r1; TPOT met: r0, r1, r3 (no TPOT); both: r0, r1 -> 2 of 5
    assert s["slo_attainment"] == pytest.approx(2 / 5)
    assert s["ttft_attainment"] == pytest.approx(2 / 5)
    assert s["tpot_attainment"] == pytest.approx(3 / 5)


def test_itl_is_the_gap_between_tokens():
    s = summarize([rec(0.0, 1.0, 3)])  # tokens at 0, 0.5, 1.0
    assert s["itl_p50_s"] == pytest.approx(0.5) and s["itl_p99_s"] == pytest.approx(0.5)


def test_goodput_interpolates_between_the_bracketing_rates():
    assert goodput({1.0: 1.0, 2.0: 0.95, 3.0: 0.85, 4.0: 0.5}) == pytest.approx(2.5)
    assert goodput({1.0: 0.99, 2.0: 0.92}) == pytest.approx(2.0)  # never falls below: last rate
    assert goodput({1.0: 0.5, 2.0: 0.95}) == 0.0  # misses already at the lowest rate
    assert goodput({}) == 0.0


def test_percentile_of_nothing_is_nan():
    assert math.isnan(percentile([], 90))


def test_records_file_has_one_line_per_request(tmp_path):
    path = tmp_path / "records.jsonl"
    write_records(path, RECORDS, rate=2.0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == len(RECORDS)
    assert lines[0]["rate"] == 2.0 and lines[0]["tpot_s"] == pytest.approx(0.1)
    assert lines[-1]["error"] == "HTTP 500: boom"
