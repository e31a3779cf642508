"""Greedy output of the engine equals transformers' (float32), token for token."""

from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import CHUNK
from tests.reference_model import greedy_tokens, prompt_ids

# Lengths from a few tokens to several chunked-prefill chunks.
LENGTHS = [3, 17, 50, CHUNK * 2 + 5, 300]
NEW_TOKENS = 24


def generate_ids(server, ids):
    r = httpx.post(server.url + "/generate", timeout=120, json={
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}})
    assert r.status_code == 200, r.text
    return r.json()["output_ids"]


def check_equal_to_transformers(server, model_path, concurrent: bool):
    prompts = [prompt_ids(n, seed=n) for n in LENGTHS]
    if concurrent:
        with ThreadPoolExecutor(len(prompts)) as pool:
            outputs = list(pool.map(lambda p: generate_ids(server, p), prompts))
    else:
        outputs = [generate_ids(server, p) for p in prompts]
    for prompt, got in zip(prompts, outputs):
        assert got == greedy_tokens(model_path, prompt, NEW_TOKENS), f"prompt of {len(prompt)} tokens"


def test_unified_greedy_equals_transformers(unified_server, tiny_model):
    check_equal_to_transformers(unified_server, tiny_model, concurrent=False)


def test_unified_greedy_equals_transformers_when_batched(unified_server, tiny_model):
    check_equal_to_transformers(unified_server, tiny_model, concurrent=True)
