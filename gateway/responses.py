"""Turning the engine's per-step deltas into OpenAI response bodies and SSE chunk streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway import errors
from gateway.engine import ChoiceDelta, TokenLogprob, Usage
from swarm.event_loop import retrieved

FINGERPRINT = "swarmgate-0.1.0"


def envelope(
    kind: str, response_id: str, created: int, model: str, choices: list[dict[str, Any]]
) -> dict[str, Any]:
    """The fields every completion body and chunk shares."""
    return {
        "id": response_id,
        "object": kind,
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": choices,
    }


def usage_json(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def chat_logprobs(items: list[TokenLogprob]) -> dict[str, Any]:
    """Chat completions' `logprobs` object."""
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": list(lp.token.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": p, "bytes": list(t.encode())} for t, p in lp.top
                ],
            }
            for lp in items
        ]
    }


def completion_logprobs(items: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """Legacy completions' `logprobs` object (tokens, token_logprobs, top_logprobs, offsets)."""
    offsets = []
    for lp in items:
        offsets.append(offset)
        offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in items],
        "token_logprobs": [lp.logprob for lp in items],
        "top_logprobs": [dict(lp.top) for lp in items],
        "text_offset": offsets,
    }


@dataclass
class Collected:
    """Every choice's whole text, finish reason and logprobs, for non-streaming answers."""

    n: int
    texts: list[str] = field(init=False)
    finish: list[str | None] = field(init=False)
    logprobs: list[list[TokenLogprob]] = field(init=False)

    def __post_init__(self) -> None:
        self.texts = [""] * self.n
        self.finish = [None] * self.n
        self.logprobs = [[] for _ in range(self.n)]

    @classmethod
    async def of(cls, source: AsyncIterator[list[ChoiceDelta]], n: int) -> Collected:
        collected = cls(n)
        async for deltas in source:
            for delta in deltas:
                collected.texts[delta.index] += delta.text
                collected.finish[delta.index] = delta.finish_reason or collected.finish[delta.index]
                collected.logprobs[delta.index].extend(delta.logprobs)
        return collected


async def started(
    source: AsyncIterator[list[ChoiceDelta]], routed: asyncio.Event | None = None
) -> AsyncIterator[list[ChoiceDelta]]:
    """Run `source` up to its first item, or until `routed` is set, whichever comes first,
    then replay it. Errors before that surface as HTTP errors (a real 503 when no chain can
    serve); the response can start once the first peer of the chain took the request, so its
    headers and opening chunk go out while the other peers compute."""

    async def first_of() -> list[ChoiceDelta]:
        return await anext(source)

    first = asyncio.ensure_future(first_of())
    first.add_done_callback(retrieved)  # a stream closed before its replay began never awaits it
    signal = asyncio.ensure_future(routed.wait()) if routed is not None else None
    try:
        waits = [first] if signal is None else [first, signal]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the request itself was cancelled
        first.cancel()
        raise
    finally:
        if signal is not None:
            signal.cancel()
    if first.done():
        first.result()  # its error, before any answer

    async def replay() -> AsyncIterator[list[ChoiceDelta]]:
        try:
            yield await first
            async for item in source:
                yield item
        finally:
            first.cancel()  # the client left before the first token: the generation ends

    return replay()


ChunkBody = Callable[[list[dict[str, Any]]], dict[str, Any]]


async def sse_events(
    source: AsyncIterator[list[ChoiceDelta]],
    body: ChunkBody,
    choice: Callable[[ChoiceDelta], dict[str, Any]],
    usage: Usage,
    include_usage: bool,
    opening: list[dict[str, Any]] | None = None,
    on_first_token: Callable[[], None] | None = None,
) -> AsyncIterator[bytes]:
    """SSE events in OpenAI's shape: chunks, the usage chunk if asked, then `[DONE]`.

    A failure mid-stream ends the stream with an error event in OpenAI's error shape.
    `on_first_token` is called just before the first event after the opening is yielded (the
    first token's text, or the reply's end when it has none). Events
    are encoded here (sse-starlette sends bytes as they are): the envelope, the same for every
    chunk, is serialized once and each chunk only adds its choices (a third of the cost of
    dumping the whole chunk, per token and stream).
    """
    empty = body([])
    if include_usage:
        empty["usage"] = None
    # keys are quoted and quotes inside values escaped: the marker occurs once, as the key
    head, tail = json.dumps(empty).split('"choices": []')

    def event(choices: list[dict[str, Any]]) -> bytes:
        return f'data: {head}"choices": {json.dumps(choices)}{tail}\n\n'.encode()

    def data(value: dict[str, Any] | str) -> bytes:
        text = value if isinstance(value, str) else json.dumps(value)
        return f"data: {text}\n\n".encode()

    try:
        if opening:
            yield event(opening)
        async for deltas in source:
            for delta in deltas:
                if delta.text or delta.finish_reason:
                    if on_first_token is not None:
                        on_first_token()
                        on_first_token = None
                    yield event([choice(delta)])
        if include_usage:
            yield data({**body([]), "usage": usage_json(usage)})
    except Exception as error:
        failure = error if isinstance(error, errors.APIError) else errors.internal_error()
        yield data(failure.body())
    yield data("[DONE]")
