"""Timed streaming requests against any SGLang or OpenAI-compatible server: one record each.

Requests give the prompt as token ids (exactly the requested length) and force the output to its
length (`ignore_eos`). By default they go to `/v1/completions`, which SGLang and vLLM both accept;
`api="sglang"` sends them to SGLang's own `/generate` instead, which SGLang's router also
forwards with token ids (it refuses them on `/v1/completions`). TTFT is the time to the first
token; TPOT is (e2e - ttft) / (tokens - 1), as SGLang's own benchmark defines it. A request that
fails, or ends short, is recorded with its error.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx


class ServerUnreachable(RuntimeError):
    pass


@dataclass
class RequestRecord:
    prompt_len: int
    max_tokens: int = 0
    arrival_s: float = 0.0  # when it was sent, from the start of the run
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


def served_model(url: str, timeout_s: float = 10.0) -> str:
    """The first model a server lists at /v1/models; ServerUnreachable with one clear line if not."""
    try:
        response = httpx.get(url.rstrip("/") + "/v1/models", timeout=timeout_s)
        response.raise_for_status()
        return response.json()["data"][0]["id"]
    except httpx.HTTPError as exc:
        raise ServerUnreachable(f"cannot reach an OpenAI-compatible server at {url}: {exc}") from None
    except (KeyError, IndexError, ValueError):
        raise ServerUnreachable(f"{url}/v1/models did not list a model") from None


APIS = ("openai", "sglang")


def detect_api(url: str, timeout_s: float = 5.0) -> str:
    """'sglang' when `url` is SGLang's router, which refuses token-id prompts on /v1/completions
    (HTTP 422) and forwards them on /generate; else 'openai'. The router answers `GET /liveness`,
    which SGLang's and vLLM's servers do not serve (404). Servers keep /v1/completions, so results
    against them stay comparable with vLLM's and with earlier runs."""
    try:
        return "sglang" if httpx.get(url.rstrip("/") + "/liveness", timeout=timeout_s).status_code == 200 else "openai"
    except httpx.HTTPError:
        return "openai"  # unreachable: served_model reports it


def streamed_request(api: str, model: str, input_ids: list[int], max_tokens: int) -> tuple[str, dict]:
    """(path, body) of one streamed request in `api`'s form."""
    if api == "openai":
        return "/v1/completions", {"model": model, "prompt": input_ids, "max_tokens": max_tokens, "temperature": 0,
                                   "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    if api == "sglang":
        return "/generate", {"input_ids": input_ids, "stream": True,
                             "sampling_params": {"max_new_tokens": max_tokens, "temperature": 0, "ignore_eos": True}}
    raise ValueError(f"unknown api {api!r}; valid: {', '.join(APIS)}")


def tokens_after(api: str, chunk: dict, tokens: int) -> int:
    """The output tokens streamed so far, once `chunk` has come: OpenAI streams one chunk per token
    (its text may be empty: partial UTF-8), SGLang's /generate the count so far."""
    if api == "sglang":
        return chunk.get("meta_info", {}).get("completion_tokens", tokens)
    return tokens + 1 if chunk.get("choices") else tokens


async def stream_completion(client: httpx.AsyncClient, url: str, model: str, input_ids: list[int],
                            max_tokens: int, api: str = "openai") -> RequestRecord:
    record = RequestRecord(prompt_len=len(input_ids), max_tokens=max_tokens)
    path, body = streamed_request(api, model, input_ids, max_tokens)
    start = time.perf_counter()
    tokens = 0
    try:
        async with client.stream("POST", url + path, json=body) as response:
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
                if chunk.get("usage"):
                    record.output_len = chunk["usage"].get("completion_tokens") or record.output_len
                now, before, tokens = time.perf_counter() - start, tokens, tokens_after(api, chunk, tokens)
                if tokens > before:
                    record.ttft_s = now if record.ttft_s is None else record.ttft_s
                    record.token_times_s += [now] * (tokens - before)
    except (httpx.HTTPError, ValueError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
        return record
    record.e2e_s = time.perf_counter() - start
    record.output_len = record.output_len or tokens
    if record.output_len != max_tokens:
        record.error = f"incomplete output: {record.output_len} of {max_tokens} tokens"
    return record


def _client(timeout_s: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(timeout=timeout_s, limits=limits)


async def run_concurrently(url: str, prompts: list[list[int]], max_tokens: int,
                           timeout_s: float = 600.0, api: str = "openai") -> list[RequestRecord]:
    """Send all prompts at once."""
    model = served_model(url)
    async with _client(timeout_s) as client:
        return await asyncio.gather(*(stream_completion(client, url, model, p, max_tokens, api) for p in prompts))


async def replay(url: str, requests, vocab: int = 1000, timeout_s: float = 600.0, on_done=None,
                 seed: int = 0, api: str = "openai") -> list[RequestRecord]:
    """Send each request at its arrival time (relative to now); one record per request, in order."""
    from loadtest.workload import prompt_tokens

    model = served_model(url)
    start = time.perf_counter()
    async with _client(timeout_s) as client:
        async def one(i, request):
            await asyncio.sleep(max(0.0, request.arrival_s - (time.perf_counter() - start)))
            sent = time.perf_counter() - start
            record = await stream_completion(client, url, model, prompt_tokens(i, request, vocab, seed),
                                             request.output_len, api)
            record.arrival_s = sent
            if on_done:
                on_done(record)
            return record

        return await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
