"""The SGLang HTTP API served by `semipd serve --mode unified` on a real loopback server."""

import json

import httpx
import pytest

from tests.conftest import post_declaring


def post(server, path, body, **kw):
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


def sse_events(server, path, body) -> list:
    events = []
    with httpx.stream("POST", server.url + path, json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def model_name(server):
    return httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"]


def test_generate(unified_server):
    r = post(unified_server, "/generate", {"text": "Hello there", "sampling_params":
                                           {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}})
    assert r.status_code == 200
    out = r.json()
    assert len(out["output_ids"]) == 8 and out["meta_info"]["completion_tokens"] == 8
    assert out["meta_info"]["finish_reason"]["type"] == "length"
    assert isinstance(out["text"], str) and out["text"]


def test_generate_streaming(unified_server):
    chunks = sse_events(unified_server, "/generate", {
        "text": "Hello", "stream": True,
        "sampling_params": {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}})
    assert len(chunks) >= 2
    assert len(chunks[-1]["output_ids"]) == 6  # each chunk carries the whole output so far
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"


def test_openai_completions_and_streaming(unified_server):
    name = model_name(unified_server)
    r = post(unified_server, "/v1/completions",
             {"model": name, "prompt": "Once upon", "max_tokens": 5, "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] == 5
    chunks = sse_events(unified_server, "/v1/completions", {
        "model": name, "prompt": "Once upon", "max_tokens": 5, "temperature": 0,
        "ignore_eos": True, "stream": True})
    streamed = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert streamed == body["choices"][0]["text"]  # greedy: stream and non-stream agree


def test_openai_chat_and_streaming(unified_server):
    name = model_name(unified_server)
    messages = [{"role": "user", "content": "Say something."}]
    r = post(unified_server, "/v1/chat/completions",
             {"model": name, "messages": messages, "max_tokens": 5, "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    chunks = sse_events(unified_server, "/v1/chat/completions", {
        "model": name, "messages": messages, "max_tokens": 5, "temperature": 0,
        "ignore_eos": True, "stream": True})
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert streamed == body["choices"][0]["message"]["content"]


def test_models_health_and_metrics(unified_server, tiny_model):
    models = httpx.get(unified_server.url + "/v1/models", timeout=10).json()
    assert models["data"][0]["root"] == str(tiny_model)
    assert models["data"][0]["max_model_len"] == 2048
    assert httpx.get(unified_server.url + "/health", timeout=10).status_code == 200
    post(unified_server, "/generate", {"text": "metrics", "sampling_params": {"max_new_tokens": 2}})
    metrics = httpx.get(unified_server.url + "/metrics", timeout=10).text
    ttft_count = [line for line in metrics.splitlines()
                  if line.startswith("sglang:time_to_first_token_seconds_count")]
    assert ttft_count and float(ttft_count[0].split()[-1]) >= 1


TOO_LONG = [10 + i % 2000 for i in range(2100)]  # in the vocabulary, past the 2,048-token context
BAD_INPUTS = {
    "malformed json": ("/generate", b'{"text": "hi",', 400),
    "malformed json (openai)": ("/v1/completions", b'{"model": "m", "prompt": ', 400),
    "missing prompt": ("/generate", {"sampling_params": {"max_new_tokens": 4}}, 400),
    "missing prompt (openai)": ("/v1/completions", {"model": "MODEL", "max_tokens": 4}, 400),
    "missing messages (chat)": ("/v1/chat/completions", {"model": "MODEL", "max_tokens": 4}, 400),
    "negative max_new_tokens": ("/generate", {"text": "hi", "sampling_params": {"max_new_tokens": -5}}, 400),
    "negative max_tokens": ("/v1/completions", {"model": "MODEL", "prompt": "hi", "max_tokens": -5}, 400),
    "huge max_new_tokens": ("/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 10**9}}, 400),
    "huge max_tokens (chat)": ("/v1/chat/completions", {"model": "MODEL", "max_tokens": 10**9,
                                                        "messages": [{"role": "user", "content": "hi"}]}, 400),
    "prompt longer than context": ("/generate", {"input_ids": TOO_LONG,
                                                 "sampling_params": {"max_new_tokens": 4}}, 400),
    "prompt longer than context (openai)": ("/v1/completions", {"model": "MODEL", "max_tokens": 4,
                                                               "prompt": TOO_LONG}, 400),
    "token id outside the vocabulary": ("/generate", {"input_ids": [10**9, 5], "sampling_params": {"max_new_tokens": 4}},
                                        400),
    "negative token id in a batch": ("/generate", {"input_ids": [[5, 6], [7, -1]], "sampling_params": {"max_new_tokens": 4}},
                                     400),
    "token id outside the vocabulary (openai)": ("/v1/completions", {"model": "MODEL", "prompt": [5, 10**9],
                                                                     "max_tokens": 4}, 400),
    "unknown model": ("/v1/completions", {"model": "no-such-model", "prompt": "hi", "max_tokens": 4}, 404),
    "unknown model (chat)": ("/v1/chat/completions", {"model": "no-such-model", "max_tokens": 4,
                                                      "messages": [{"role": "user", "content": "hi"}]}, 404),
}


def test_an_oversized_body_is_refused_from_its_length_and_the_server_keeps_serving(unified_server):
    status, body = post_declaring(unified_server.url, "/generate", 65 * 2**20)  # the default limit is 64 MiB
    assert status == 413 and f"limit of {64 * 2**20} bytes" in body, body
    ok = post(unified_server, "/generate", {"text": "still there?", "sampling_params": {"max_new_tokens": 2}})
    assert ok.status_code == 200


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(unified_server, case):
    path, body, status = BAD_INPUTS[case]
    name = model_name(unified_server)
    if isinstance(body, dict):
        body = json.dumps(body).replace('"MODEL"', json.dumps(name)).encode()
    r = httpx.post(unified_server.url + path, content=body,
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    message = json.dumps(r.json())
    assert "message" in message and len(message) > 20
    ok = post(unified_server, "/generate", {"text": "still there?", "sampling_params": {"max_new_tokens": 2}})
    assert ok.status_code == 200 and len(ok.json()["output_ids"]) == 2
