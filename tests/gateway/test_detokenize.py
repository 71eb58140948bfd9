"""Incremental detokenization gives exactly the text of decoding the whole reply at once."""

from __future__ import annotations

import pytest

from gateway.detokenize import IncrementalDecoder
from swarm.head import Head
from swarm.models import load_weights

TEXTS = [
    "Hello, world! The capital of France is Paris.",
    "  leading spaces,\ttabs\nand new lines",
    "Unicode: café, naïve, 日本語, emoji 🎉🚀 and ∑∫ maths.",
    "code: def f(x):\n    return x ** 2  # squares",
]


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "gemma3-270m"])
def test_pieces_add_up_to_the_whole_decode(model: str) -> None:
    head = Head(load_weights(model))
    for text in TEXTS:
        ids = head.tokenizer.encode(text, add_special_tokens=False)
        decoder = IncrementalDecoder(head.decode)
        pieces = [decoder.push(token) for token in ids]
        assert "".join(pieces) == head.decode(ids)
        assert all("\ufffd" not in piece for piece in pieces)
