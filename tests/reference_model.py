"""Greedy generation with plain transformers: the exact reference for every engine mode."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=4)
def _load(model_path: str):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32)
    return model.eval()


def greedy_tokens(model_path: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    import torch

    # An explicit loop rather than generate(): no generation-config defaults (EOS, penalties)
    # can differ from the server's `ignore_eos` greedy decoding.
    model = _load(str(model_path))
    tokens: list[int] = []
    with torch.no_grad():
        out = model(torch.tensor([prompt_ids]), use_cache=True)
        for _ in range(max_new_tokens):
            tokens.append(int(out.logits[0, -1].argmax()))
            out = model(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens


def prompt_ids(length: int, seed: int, vocab: int = 2000) -> list[int]:
    """A deterministic prompt of exactly `length` ordinary (non-special) token ids."""
    import random

    rng = random.Random(seed)
    return [rng.randrange(10, vocab) for _ in range(length)]


# Prompt lengths from a few tokens to several chunked-prefill chunks (the test servers use 64).
LENGTHS = [3, 17, 50, 133, 300]
NEW_TOKENS = 24


def generate_ids(url: str, ids: list[int], new_tokens: int = NEW_TOKENS) -> list[int]:
    import httpx

    r = httpx.post(url + "/generate", timeout=300, json={
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True}})
    assert r.status_code == 200, r.text
    return r.json()["output_ids"]


def check_equal_to_transformers(url: str, model_path: Path, concurrent: bool,
                                lengths=LENGTHS, new_tokens: int = NEW_TOKENS) -> None:
    from concurrent.futures import ThreadPoolExecutor

    prompts = [prompt_ids(n, seed=n) for n in lengths]
    if concurrent:
        with ThreadPoolExecutor(len(prompts)) as pool:
            outputs = list(pool.map(lambda p: generate_ids(url, p, new_tokens), prompts))
    else:
        outputs = [generate_ids(url, p, new_tokens) for p in prompts]
    for prompt, got in zip(prompts, outputs):
        assert got == greedy_tokens(model_path, prompt, new_tokens), f"prompt of {len(prompt)} tokens"
