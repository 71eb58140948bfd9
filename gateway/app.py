"""The FastAPI app: OpenAI's `/v1` surface over the swarm, plus health and the swarm map.

Routes: `POST /v1/chat/completions`, `POST /v1/completions` (both streaming over SSE when
asked), `GET /v1/models`, `GET /v1/models/{id}`, `GET /v1/swarm`, `GET /health`, `GET /ready`;
the dashboard (`/`, `/dashboard/*`) comes from `gateway.dashboard`.
Every error is in OpenAI's shape (see `gateway.errors`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from gateway import errors
from gateway.access import AccessLog, access_record
from gateway.auth import RequireApiKey
from gateway.dashboard import dashboard_router
from gateway.engine import ChoiceDelta, Engine, NoRouteError, ServedModel, Usage
from gateway.keys import KeyGuard, KeyInfo
from gateway.metrics import CONTENT_TYPE, GatewayMetrics
from gateway.responses import (
    Collected,
    chat_logprobs,
    completion_logprobs,
    envelope,
    sse_events,
    started,
    usage_json,
)
from gateway.sampling import SamplingParams
from gateway.schemas import ChatCompletionRequest, CompletionRequest
from gateway.swarm_map import SwarmMap
from swarm import trace

DEFAULT_MAX_TOKENS = 2048
RETRY_AFTER = 5
MAX_PROMPTS = 16
# prompts up to this many characters are tokenized on the event loop (~0.25 ms for a short
# chat here; the thread hop alone costs twice that); longer ones in a thread
INLINE_TOKENIZE_CHARS = 2048
T = TypeVar("T")


async def tokenize(encode: Callable[[T], list[int]], prompt: T, chars: int) -> list[int]:
    """`encode(prompt)`, on the loop when the prompt is short, else in a thread."""
    if chars <= INLINE_TOKENIZE_CHARS:
        return encode(prompt)
    return await run_in_threadpool(encode, prompt)


def sse_response(
    request: Request,
    source: AsyncIterator[list[ChoiceDelta]],
    body: Callable[[list[dict[str, Any]]], dict[str, Any]],
    choice: Callable[[ChoiceDelta], dict[str, Any]],
    usage: Usage,
    include_usage: bool,
    opening: list[dict[str, Any]] | None = None,
) -> EventSourceResponse:
    """A streamed answer whose first token is timed by the access log."""
    events = sse_events(
        source,
        body,
        choice,
        usage,
        include_usage,
        opening,
        on_first_token=access_record(request).token_next,
    )
    return EventSourceResponse(events, sep="\n", ping=15)


def create_app(
    engine: Engine,
    api_keys: Sequence[str] = (),
    max_body_bytes: int = 4 << 20,
    guard: KeyGuard | None = None,
) -> FastAPI:
    app = FastAPI(
        title="swarmgate",
        version="0.1.0",
        description="OpenAI-compatible gateway to a peer-to-peer swarm",
        strict_content_type=False,
    )
    errors.install_error_handlers(app)
    app.add_middleware(errors.BodySizeLimit, max_bytes=max_body_bytes)
    guard = guard or KeyGuard(static_keys=list(api_keys))
    swarm_map = SwarmMap(engine)
    app.include_router(dashboard_router(swarm_map, guard))  # `/` and `/dashboard/*`: no key

    app.add_middleware(RequireApiKey, guard=guard)
    metrics: GatewayMetrics = getattr(engine, "metrics", None) or GatewayMetrics()
    # outermost: sees every request
    app.add_middleware(
        AccessLog, on_done=metrics.request_done, on_first_token=metrics.first_token_sent
    )

    async def admit(request: Request, tokens: int) -> None:
        """Count the request against its key's per-minute limits (429 when over)."""
        info: KeyInfo | None = request.state.key
        if info is None:
            return
        decision = await guard.admit(info, tokens)
        if not decision.allowed:
            raise errors.rate_limited(
                decision.retry_after, f"Rate limit reached: {decision.reason}."
            )

    def resolve(name: str) -> ServedModel:
        model = engine.find_model(name)
        if model is None:
            raise errors.not_found(f"The model '{name}' does not exist")
        if not engine.available(model):
            raise errors.unavailable(
                f"The swarm does not cover every block of '{model.name}' right now", RETRY_AFTER
            )
        return model

    def budget(model: ServedModel, prompt: list[int], requested: int | None, param: str) -> int:
        room = model.max_context - len(prompt)
        if room <= 0:
            raise errors.invalid_request(
                f"The prompt has {len(prompt)} tokens; this model's context is {model.max_context}",
                param="messages" if param != "prompt" else "prompt",
                code="context_length_exceeded",
            )
        if requested is None:
            return min(room, DEFAULT_MAX_TOKENS)
        if requested > room:
            raise errors.invalid_request(
                f"max_tokens {requested} + {len(prompt)} prompt tokens exceed "
                f"the model's context of {model.max_context}",
                param=param,
                code="context_length_exceeded",
            )
        return requested

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 when the default model is fully covered; also reports the session store."""
        default = engine.models[0]
        ok = engine.available(default)
        store_ok = await engine.store.healthy()
        body = {
            "status": "ready" if ok else "not_ready",
            "model": default.name,
            "store": engine.store.name,
            "store_ok": store_ok,
            "degraded": []
            if store_ok
            else [f"{engine.store.name} store unreachable: no prefix reuse, per-process limits"],
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        data = [
            {"id": m.name, "object": "model", "created": m.created, "owned_by": "swarmgate"}
            for m in engine.models
            if engine.available(m)
        ]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        model = engine.find_model(model_id)
        if model is None or not engine.available(model):
            raise errors.not_found(f"The model '{model_id}' does not exist")
        return {
            "id": model.name,
            "object": "model",
            "created": model.created,
            "owned_by": "swarmgate",
        }

    @app.get("/v1/swarm")
    async def swarm() -> dict[str, Any]:
        return await swarm_map.to_json()

    async def run_choices(
        model: ServedModel,
        prompt: list[int],
        n: int,
        max_tokens: int,
        stop: list[str],
        params: SamplingParams,
        usage: Usage,
        routed: asyncio.Event | None = None,
    ) -> AsyncIterator[list[ChoiceDelta]]:
        try:
            generation = engine.generate(
                model,
                prompt,
                n=n,
                max_tokens=max_tokens,
                stops=stop,
                params=params,
                usage=usage,
                on_routed=None if routed is None else routed.set,
            )
            async for deltas in metrics.track(model.name, generation, usage):
                yield deltas
        except NoRouteError as error:
            raise errors.unavailable(str(error), RETRY_AFTER) from error

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        trace.mark("handler")
        model = resolve(body.model)
        if not model.chat:
            raise errors.invalid_request(
                f"'{model.name}' is a base model without a chat template: use /v1/completions",
                param="model",
            )
        messages = body.template_messages()
        chars = sum(len(m["content"]) for m in messages)
        prompt = await tokenize(model.head.encode_chat, messages, chars)
        trace.mark("tokenized", "", len(prompt))
        max_tokens = budget(model, prompt, body.effective_max_tokens(), "max_tokens")
        await admit(request, (len(prompt) + max_tokens) * (body.n or 1))
        trace.mark("admitted")
        stop = body.stop_list()
        params = SamplingParams.from_request(body)
        params.check_vocab(model.head.vocab_size)
        n = body.n or 1
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        usage = Usage()
        access_record(request).note(model.name, usage, bool(body.stream))
        if body.stream:
            # start generating before answering: a swarm that cannot serve gets a real 503;
            # the answer starts once the first peer took the request (or at the first token)
            routed = asyncio.Event()
            source = run_choices(model, prompt, n, max_tokens, stop, params, usage, routed)
            first = await started(source, routed)

            def chunk_body(choices: list[dict[str, Any]]) -> dict[str, Any]:
                return envelope(
                    "chat.completion.chunk", completion_id, created, model.name, choices
                )

            def chunk_choice(delta: ChoiceDelta) -> dict[str, Any]:
                return {
                    "index": delta.index,
                    "delta": {"content": delta.text} if delta.text else {},
                    "logprobs": chat_logprobs(delta.logprobs) if delta.logprobs else None,
                    "finish_reason": delta.finish_reason,
                }

            opening = [
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
                for i in range(n)
            ]
            return sse_response(
                request, first, chunk_body, chunk_choice, usage, body.include_usage, opening
            )
        source = run_choices(model, prompt, n, max_tokens, stop, params, usage)
        done = await Collected.of(source, n)
        return {
            **envelope("chat.completion", completion_id, created, model.name, []),
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": done.texts[i], "refusal": None},
                    "logprobs": chat_logprobs(done.logprobs[i]) if params.logprobs else None,
                    "finish_reason": done.finish[i] or "length",
                }
                for i in range(n)
            ],
            "usage": usage_json(usage),
        }

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        model = resolve(body.model)
        prompts = body.prompts()
        if len(prompts) > MAX_PROMPTS:
            raise errors.invalid_request(
                f"at most {MAX_PROMPTS} prompts per request", param="prompt"
            )
        if len(prompts) != 1 and body.stream:
            raise errors.invalid_request("stream=true takes a single prompt", param="prompt")
        n = body.n or 1
        stop = body.stop_list()
        params = SamplingParams.from_request(body)
        params.check_vocab(model.head.vocab_size)
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        encoded = [await tokenize(model.head.encode_text, p, len(p)) for p in prompts]
        limits = [
            budget(model, ids, body.effective_max_tokens(16), "max_tokens") for ids in encoded
        ]
        await admit(
            request, sum(len(ids) + limit for ids, limit in zip(encoded, limits, strict=True)) * n
        )
        if body.stream:
            usage = Usage()
            access_record(request).note(model.name, usage, True)
            routed = asyncio.Event()
            first = await started(
                run_choices(model, encoded[0], n, limits[0], stop, params, usage, routed), routed
            )
            offsets = [0] * n

            def chunk_body(choices: list[dict[str, Any]]) -> dict[str, Any]:
                return envelope("text_completion", completion_id, created, model.name, choices)

            def chunk_choice(delta: ChoiceDelta) -> dict[str, Any]:
                logprobs = None
                if params.logprobs:
                    logprobs = completion_logprobs(delta.logprobs, offsets[delta.index])
                    offsets[delta.index] += len(delta.text)
                return {
                    "text": delta.text,
                    "index": delta.index,
                    "logprobs": logprobs,
                    "finish_reason": delta.finish_reason,
                }

            return sse_response(request, first, chunk_body, chunk_choice, usage, body.include_usage)
        choices: list[dict[str, Any]] = []
        total = Usage()
        access_record(request).note(model.name, total, False)
        for p_index, (ids, limit) in enumerate(zip(encoded, limits, strict=True)):
            usage = Usage()
            done = await Collected.of(run_choices(model, ids, n, limit, stop, params, usage), n)
            total.prompt_tokens += usage.prompt_tokens
            total.completion_tokens += usage.completion_tokens
            for i in range(n):
                choices.append(
                    {
                        "text": done.texts[i],
                        "index": p_index * n + i,
                        "logprobs": completion_logprobs(done.logprobs[i])
                        if params.logprobs
                        else None,
                        "finish_reason": done.finish[i] or "length",
                    }
                )
        return {
            **envelope("text_completion", completion_id, created, model.name, []),
            "choices": choices,
            "usage": usage_json(total),
        }

    return app
