"""SLOs the way semi-PD set them: the latency of requests served alone, multiplied.

The semi-PD paper set "tight" SLOs at about 7.5x and "loose" at about 10x the latency of a request
served alone. `calibrate` sends requests one at a time (each after the previous one finished),
takes the median TTFT and TPOT, and multiplies.
"""

from __future__ import annotations

import asyncio
import statistics

from loadtest.load_generator import replay
from loadtest.workload import Request

TIGHT, LOOSE = 7.5, 10.0
DEFAULT_WORKLOAD = "poisson:rate=1,prompt=256,output=64,count=10"


def calibrate(url: str, requests, vocab: int) -> dict:
    records = []
    for r in requests:  # one at a time: unloaded
        records += asyncio.run(replay(url, [Request(0.0, r.prompt_len, r.output_len, r.prefix_group, r.prefix_len)],
                                      vocab, seed=10_000 + len(records)))  # prompts no benchmark sends
    failed = [r.error for r in records if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} calibration request(s) failed: {failed[0]}")
    ttft = statistics.median(r.ttft_s for r in records)
    tpot = statistics.median(r.tpot_s for r in records if r.tpot_s is not None)
    return {"requests": len(records), "ttft_p50_s": ttft, "tpot_p50_s": tpot,
            "tight": {"ttft_slo_s": TIGHT * ttft, "tpot_slo_s": TIGHT * tpot},
            "loose": {"ttft_slo_s": LOOSE * ttft, "tpot_slo_s": LOOSE * tpot}}
