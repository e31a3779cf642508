"""Greedy output of the engine in unified mode equals transformers' (float32), token for token."""

from tests.reference_model import check_equal_to_transformers


def test_unified_greedy_equals_transformers(unified_server, tiny_model):
    check_equal_to_transformers(unified_server.url, tiny_model, concurrent=False)


def test_unified_greedy_equals_transformers_when_batched(unified_server, tiny_model):
    check_equal_to_transformers(unified_server.url, tiny_model, concurrent=True)
