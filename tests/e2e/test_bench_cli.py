"""`semipd bench` and `semipd calibrate-slo` against a real tiny server on loopback."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TRACE = Path(__file__).resolve().parents[3] / "shared" / "data" / "azure_llm_2023_conv.csv"
SEMIPD = [sys.executable, "-m", "cli.main"]


def semipd(*args, check=True):
    result = subprocess.run([*SEMIPD, *args], capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_replay_of_an_azure_slice_counts_every_request(unified_server, tmp_path):
    records = tmp_path / "records.jsonl"
    workload = f"trace:{TRACE},start=60,len_scale=0.1,max_prompt=300,max_output=40"
    # 50 requests: the slice's first rows, re-timed to 8 requests/s
    out = semipd("bench", "--url", unified_server.url, "--workload", workload + ",duration=9.5",
                 "--ttft-slo", "2", "--tpot-slo", "0.5", "--rates", "8", "--json", "--records", str(records))
    report = json.loads(out.stdout)  # nothing but JSON on stdout
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert report["requests"] == len(lines) >= 40
    assert report["completed"] + report["failed"] == len(lines)
    assert report["completed"] == sum(line["error"] is None for line in lines)
    assert report["failed"] == 0
    assert report["api"] == "openai"  # --api auto: a server (not SGLang's router) keeps /v1/completions
    assert all(line["output_len"] == line["max_tokens"] for line in lines)
    for key in ("ttft_p90_s", "tpot_p90_s", "e2e_mean_s", "slo_attainment", "goodput_rps"):
        assert key in report
    assert 0 <= report["slo_attainment"] <= 1
    assert report["ttft_p90_s"] == pytest.approx(float(np.percentile([line["ttft_s"] for line in lines], 90)))


def test_goodput_over_rates_and_plot(unified_server, tmp_path):
    plot = tmp_path / "attainment.png"
    out = semipd("bench", "--url", unified_server.url, "--workload",
                 "poisson:rate=1,prompt=uniform(10,100),output=8,count=20", "--ttft-slo", "1",
                 "--tpot-slo", "0.2", "--rates", "2,6", "--json", "--plot", str(plot), "--label", "tiny")
    report = json.loads(out.stdout)
    assert [r["rate"] for r in report["rates"]] == [2.0, 6.0]
    assert all(r["completed"] == 20 for r in report["rates"])
    assert report["goodput_rps"] in (0.0, 2.0, 6.0) or 2.0 < report["goodput_rps"] < 6.0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_is_one_line_and_a_nonzero_exit(unified_server, tmp_path):
    cases = [
        ["--url", "http://127.0.0.1:9", "--workload", "poisson:rate=1,prompt=5,output=5"],
        ["--url", unified_server.url, "--workload", f"trace:{tmp_path}/missing.csv"],
        ["--url", unified_server.url, "--workload", "poisson:rate=1,prompt=-4,output=5"],
        ["--url", unified_server.url, "--workload", "poisson:rate=1,prompt=5,output=5", "--rates", "1,x"],
    ]
    for args in cases:
        result = semipd("bench", *args, "--ttft-slo", "1", "--tpot-slo", "1", check=False)
        assert result.returncode == 2, args
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("semipd bench:"), result.stderr


def test_calibrate_slo_proposes_tight_and_loose(unified_server):
    out = semipd("calibrate-slo", "--url", unified_server.url, "--requests", "4", "--json")
    result = json.loads(out.stdout)
    assert result["requests"] == 4 and result["ttft_p50_s"] > 0 and result["tpot_p50_s"] > 0
    assert result["tight"]["ttft_slo_s"] == 7.5 * result["ttft_p50_s"]
    assert result["loose"]["tpot_slo_s"] == 10 * result["tpot_p50_s"]
