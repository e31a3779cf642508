"""Build Llama-architecture models with random weights, fully offline.

A model is a Hugging Face folder (config.json, model.safetensors, tokenizer files) that
transformers, SGLang and vLLM load with their ordinary code. Weights are drawn per tensor from
a generator seeded by (seed, tensor name), so the same seed gives byte-identical files whatever
order a library version creates the tensors in. The tokenizer is a byte-level BPE trained here on
a synthetic corpus that is itself a function of the seed.
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Preset:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int


# head_dim is 64 in every preset: vLLM's CPU attention rejects smaller heads.
PRESETS: dict[str, Preset] = {
    # For tests: loads and answers in well under a second per request.
    "tiny": Preset(128, 2, 2, 1, 384, 2048, 2048),
    "small": Preset(256, 4, 4, 2, 768, 4096, 4096),
    # ~36 M parameters: big enough that prefill is compute-bound on 2 cores, small enough for a
    # 200-request benchmark in minutes (measured step times: docs/models.md).
    "bench": Preset(512, 8, 8, 8, 1536, 8192, 4096),
}

# 0.05 rather than the usual 0.02: outputs depend more on the context (a stronger test of KV
# handling) and top-2 logit gaps stay far above float32 rounding.
INIT_STD = 0.05
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


def preset_names() -> list[str]:
    return sorted(PRESETS)


def llama_config(preset: Preset):
    from transformers import LlamaConfig

    return LlamaConfig(
        **asdict(preset),
        head_dim=preset.hidden_size // preset.num_attention_heads,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        initializer_range=INIT_STD,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        torch_dtype="float32",
    )


def _tensor_seed(seed: int, name: str) -> int:
    return zlib.crc32(f"{seed}:{name}".encode())


def random_state_dict(model, seed: int) -> dict:
    """Normal(0, INIT_STD) for matrices, ones for norm weights; one generator per tensor."""
    import torch

    state = {}
    for name, param in sorted(model.state_dict().items()):
        if name.endswith("norm.weight"):
            state[name] = torch.ones_like(param)
            continue
        gen = torch.Generator().manual_seed(_tensor_seed(seed, name))
        state[name] = torch.randn(param.shape, generator=gen, dtype=torch.float32) * INIT_STD
    return state


def synthetic_corpus(seed: int, sentences: int = 20000) -> list[str]:
    """English-like text from a seeded pseudo-word lexicon with Zipf-like frequencies."""
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w",
              "br", "ch", "cl", "dr", "gr", "pl", "sh", "st", "th", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io"]
    codas = ["", "", "n", "r", "s", "t", "l", "nd", "ng", "st", "ck"]
    lexicon = sorted({
        "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                for _ in range(rng.choice([1, 1, 2, 2, 3])))
        for _ in range(4000)
    })
    rng.shuffle(lexicon)
    weights = [1.0 / (rank + 1) for rank in range(len(lexicon))]
    lines = []
    for _ in range(sentences):
        words = rng.choices(lexicon, weights, k=rng.randint(4, 18))
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 9999)))
        sentence = " ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!", ","])
        lines.append(sentence)
    return lines


def train_tokenizer(vocab_size: int, seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        model_max_length=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(preset_name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a random-weight Llama model and its tokenizer to out_dir; returns the folder."""
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; valid presets: {', '.join(preset_names())}")
    import torch
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preset = PRESETS[preset_name]
    config = llama_config(preset)
    torch.manual_seed(seed)  # only for transformers' own init, which load_state_dict overwrites
    model = LlamaForCausalLM(config)
    model.load_state_dict(random_state_dict(model, seed))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer = train_tokenizer(preset.vocab_size, seed)
    tokenizer.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    (out / "semipd_model.json").write_text(json.dumps(
        {"preset": preset_name, "seed": seed, "parameters": n_params, **asdict(preset)}, indent=2
    ) + "\n")
    return out

