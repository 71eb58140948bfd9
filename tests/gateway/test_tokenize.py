"""Short prompts are tokenized on the event loop, long ones in a thread (gateway.app)."""

from __future__ import annotations

import asyncio
import threading

from gateway.app import INLINE_TOKENIZE_CHARS, tokenize


def test_short_prompts_tokenize_on_the_loop_long_ones_in_a_thread() -> None:
    seen: list[str] = []

    def encode(text: str) -> list[int]:
        seen.append(threading.current_thread().name)
        return [len(text)]

    async def main() -> None:
        loop_thread = threading.current_thread().name
        short, long = "x" * 10, "x" * (INLINE_TOKENIZE_CHARS + 1)
        assert await tokenize(encode, short, len(short)) == [10]
        assert await tokenize(encode, long, len(long)) == [INLINE_TOKENIZE_CHARS + 1]
        assert seen[0] == loop_thread and seen[1] != loop_thread

    asyncio.run(main())
