"""Incremental detokenization: the text each new token adds, without decoding the whole reply.

Decoding only a short window (the tokens since the last emitted text, plus the ones before them
as context, so tokenizers that mark word starts still place their spaces) keeps the cost per
token constant. Text ending in an incomplete UTF-8 sequence is held until the next token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class IncrementalDecoder:
    decode: Callable[[Sequence[int]], str]
    ids: list[int] = field(default_factory=list)
    prefix_offset: int = 0  # start of the context window
    read_offset: int = 0  # tokens before this one have been emitted as text

    def push(self, token: int) -> str:
        """Add `token`; return the text it completes (maybe empty)."""
        self.ids.append(token)
        emitted = self.decode(self.ids[self.prefix_offset : self.read_offset])
        text = self.decode(self.ids[self.prefix_offset :])
        if len(text) <= len(emitted) or text.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(emitted) :]
