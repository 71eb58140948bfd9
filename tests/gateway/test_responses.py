"""SSE chunk encoding: every event is the whole chunk's JSON, whatever the envelope holds."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway import errors
from gateway.engine import ChoiceDelta, Usage
from gateway.responses import envelope, sse_events, started


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


class Generation:
    """A fake generation: signals `routed`, then waits for `release` before its first token."""

    def __init__(self, fail_before_routed: bool = False, fail_after_routed: bool = False) -> None:
        self.routed = asyncio.Event()
        self.release = asyncio.Event()
        self.fail_before_routed = fail_before_routed
        self.fail_after_routed = fail_after_routed
        self.ended = False

    async def run(self) -> AsyncIterator[list[ChoiceDelta]]:
        try:
            await asyncio.sleep(0)
            if self.fail_before_routed:
                raise errors.unavailable("no chain", 5)
            self.routed.set()
            await self.release.wait()
            if self.fail_after_routed:
                raise errors.unavailable("the second peer failed", 5)
            yield [ChoiceDelta(0, "a", token_ids=[1])]
            yield [ChoiceDelta(0, "b", token_ids=[2])]
        finally:
            self.ended = True


def test_started_returns_once_routed_and_replays_every_item() -> None:
    async def main() -> list[str]:
        generation = Generation()
        replay = await started(generation.run(), generation.routed)
        assert not generation.release.is_set()  # answered before the first token existed
        generation.release.set()
        return [d.text for deltas in [item async for item in replay] for d in deltas]

    assert asyncio.run(main()) == ["a", "b"]


def test_an_error_before_routing_is_raised_by_started() -> None:
    async def main() -> None:
        generation = Generation(fail_before_routed=True)
        await started(generation.run(), generation.routed)

    with pytest.raises(errors.APIError) as raised:
        asyncio.run(main())
    assert raised.value.status == 503


def test_an_error_after_routing_comes_out_of_the_replay() -> None:
    async def main() -> None:
        generation = Generation(fail_after_routed=True)
        replay = await started(generation.run(), generation.routed)
        generation.release.set()
        await anext(replay)

    with pytest.raises(errors.APIError):
        asyncio.run(main())


def test_without_routing_started_waits_for_the_first_item() -> None:
    async def main() -> bool:
        generation = Generation()

        async def release_soon() -> None:
            await generation.routed.wait()
            generation.release.set()

        releaser = asyncio.ensure_future(release_soon())
        replay = await started(generation.run())  # no event: the first item itself
        await releaser
        first = await anext(replay)
        return first[0].text == "a"

    assert asyncio.run(main())


def test_a_replay_closed_before_the_first_token_ends_the_generation() -> None:
    async def main() -> bool:
        generation = Generation()
        replay = await started(generation.run(), generation.routed)
        consumer = asyncio.ensure_future(anext(replay))
        await asyncio.sleep(0.01)
        consumer.cancel()  # the client went away while the first token was computed
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        await asyncio.sleep(0.01)
        return generation.ended

    assert asyncio.run(main())
