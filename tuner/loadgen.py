"""Timed streaming requests against an SGLang server: one record per request.

TTFT is the time to the first chunk that carries an output token; TPOT is the mean time per
output token after the first, (e2e - ttft) / (tokens - 1), as SGLang's own benchmark defines it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class RequestRecord:
    prompt_len: int
    output_len: int = 0
    ttft_s: float | None = None
    e2e_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.e2e_s is None or self.output_len < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_len - 1)


async def stream_generate(client: httpx.AsyncClient, url: str, input_ids: list[int],
                          max_new_tokens: int) -> RequestRecord:
    """Send one /generate request with a prompt of exactly these ids and a forced output length."""
    record = RequestRecord(prompt_len=len(input_ids))
    body = {"input_ids": input_ids, "stream": True,
            "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": True}}
    start = time.perf_counter()
    try:
        async with client.stream("POST", url + "/generate", json=body) as response:
            if response.status_code != 200:
                record.error = f"HTTP {response.status_code}: {(await response.aread()).decode()[:200]}"
                return record
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: "):])
                if "error" in chunk:
                    record.error = str(chunk["error"])[:200]
                    return record
                n = len(chunk.get("output_ids") or [])
                now = time.perf_counter() - start
                if n > record.output_len:
                    if record.ttft_s is None:
                        record.ttft_s = now
                    record.token_times_s.append(now)
                    record.output_len = n
    except httpx.HTTPError as exc:
        record.error = f"{type(exc).__name__}: {exc}"
        return record
    record.e2e_s = time.perf_counter() - start
    if record.output_len != max_new_tokens:
        record.error = f"incomplete output: {record.output_len} of {max_new_tokens} tokens"
    return record


async def run_concurrently(url: str, prompts: list[list[int]], max_new_tokens: int,
                           timeout_s: float = 600.0) -> list[RequestRecord]:
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        return await asyncio.gather(*(stream_generate(client, url, p, max_new_tokens) for p in prompts))
