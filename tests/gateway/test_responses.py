"""SSE chunk encoding: every event is the whole chunk's JSON, whatever the envelope holds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from gateway import errors
from gateway.engine import ChoiceDelta, Usage
from gateway.responses import envelope, sse_events


def chunk_choice(delta: ChoiceDelta) -> dict[str, Any]:
    return {
        "index": delta.index,
        "delta": {"content": delta.text} if delta.text else {},
        "logprobs": None,
        "finish_reason": delta.finish_reason,
    }


def events(model: str, include_usage: bool, fail: bool = False) -> list[bytes]:
    def body(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return envelope("chat.completion.chunk", "chatcmpl-1", 17, model, choices)

    async def source() -> AsyncIterator[list[ChoiceDelta]]:
        yield [ChoiceDelta(0, 'He said "choices": []\n', token_ids=[1])]
        yield [ChoiceDelta(0, "", token_ids=[2]), ChoiceDelta(1, "é", token_ids=[3])]
        if fail:
            raise RuntimeError("boom")
        yield [ChoiceDelta(0, "", finish_reason="stop")]

    async def collect() -> list[bytes]:
        usage = Usage(prompt_tokens=5, completion_tokens=3)
        opening = [{"index": 0, "delta": {"role": "assistant", "content": ""}}]
        stream = sse_events(source(), body, chunk_choice, usage, include_usage, opening)
        return [event async for event in stream]

    return asyncio.run(collect())


def expected(
    model: str, choices: list[dict[str, Any]], usage: Any = None, with_usage: bool = False
) -> bytes:
    data = envelope("chat.completion.chunk", "chatcmpl-1", 17, model, choices)
    if with_usage:
        data["usage"] = usage
    return f"data: {json.dumps(data)}\n\n".encode()


def test_each_event_is_the_whole_chunk_as_json_dumps_writes_it() -> None:
    model = 'odd "choices": [] model'  # the envelope's marker, quoted inside a value
    for with_usage in (False, True):
        got = events(model, with_usage)
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}}
        want = [
            expected(model, [first], with_usage=with_usage),
            expected(
                model,
                [chunk_choice(ChoiceDelta(0, 'He said "choices": []\n'))],
                with_usage=with_usage,
            ),
            expected(
                model, [chunk_choice(ChoiceDelta(1, "é"))], with_usage=with_usage
            ),  # no empty delta
            expected(
                model,
                [chunk_choice(ChoiceDelta(0, "", finish_reason="stop"))],
                with_usage=with_usage,
            ),
        ]
        if with_usage:
            totals = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
            want.append(expected(model, [], totals, with_usage=True))
        want.append(b"data: [DONE]\n\n")
        assert got == want
        for event in got[:-1]:  # and each parses back
            assert json.loads(event.removeprefix(b"data: "))["model"] == model


def test_a_failure_mid_stream_ends_with_an_error_event_then_done() -> None:
    got = events("m", include_usage=False, fail=True)
    error = json.loads(got[-2].removeprefix(b"data: "))
    assert error == errors.internal_error().body()  # OpenAI's error shape, nothing internal
    assert got[-1] == b"data: [DONE]\n\n"
