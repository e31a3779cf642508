import json

import pytest

from engine.random_model import PRESETS, make_model


def test_same_seed_gives_byte_identical_weights(tmp_path):
    a = make_model("tiny", tmp_path / "a", seed=7)
    b = make_model("tiny", tmp_path / "b", seed=7)
    c = make_model("tiny", tmp_path / "c", seed=8)
    weights = lambda p: (p / "model.safetensors").read_bytes()
    assert weights(a) == weights(b)
    assert weights(a) != weights(c)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_model_loads_in_transformers_with_the_preset_shape(tiny_model):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model)
    preset = PRESETS["tiny"]
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (
        preset.hidden_size, preset.num_hidden_layers, preset.vocab_size)
    assert config.hidden_size // config.num_attention_heads == 64  # vLLM-CPU needs head_dim 64
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = tok("The quick brown fox, 42 times.")["input_ids"]
    assert tok.decode(ids) == "The quick brown fox, 42 times."  # byte-level: lossless
    assert max(ids) < preset.vocab_size
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat.endswith("<|assistant|>\n")
    assert json.loads((tiny_model / "semipd_model.json").read_text())["preset"] == "tiny"


def test_unknown_preset_names_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="bench, small, tiny"):
        make_model("huge", tmp_path / "x")
    assert not (tmp_path / "x").exists()
