"""The FastAPI app: OpenAI's `/v1` surface over the swarm, plus health and the swarm map.

Routes: `POST /v1/chat/completions`, `POST /v1/completions` (both streaming over SSE when
asked), `GET /v1/models`, `GET /v1/models/{id}`, `GET /v1/swarm`, `GET /health`, `GET /ready`.
Every error is in OpenAI's shape (see `gateway.errors`).
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette.sse import EventSourceResponse

from gateway import errors
from gateway.engine import ChoiceDelta, Engine, NoRouteError, ServedModel, Usage
from gateway.sampling import SamplingParams
from gateway.schemas import ChatCompletionRequest, CompletionRequest

FINGERPRINT = "swarmgate-0.1.0"
DEFAULT_MAX_TOKENS = 2048
RETRY_AFTER = 5


def _logprobs_json(delta: ChoiceDelta) -> dict[str, Any] | None:
    if not delta.logprobs:
        return None
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
            for lp in delta.logprobs
        ]
    }


def key_matches(given: bytes, keys: Sequence[bytes]) -> bool:
    """Constant-time comparison against every configured key (no early exit)."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return matched


def create_app(
    engine: Engine, api_keys: Sequence[str] = (), max_body_bytes: int = 4 << 20
) -> FastAPI:
    app = FastAPI(
        title="swarmgate",
        version="0.1.0",
        description="OpenAI-compatible gateway to a peer-to-peer swarm",
        strict_content_type=False,
    )
    errors.install_error_handlers(app)
    app.add_middleware(errors.BodySizeLimit, max_bytes=max_body_bytes)
    keys = [key.encode() for key in api_keys if key]

    @app.middleware("http")
    async def require_api_key(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """`/v1/*` needs `Authorization: Bearer <key>` when keys are configured."""
        if keys and request.url.path.startswith("/v1"):
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if not key_matches(given.strip().encode(), keys) or scheme.lower() != "bearer":
                return errors.authentication_error().to_response()
        return await call_next(request)

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

    @app.get("/ready")
    async def ready() -> JSONResponse:
        default = engine.models[0]
        ok = engine.available(default)
        body = {"status": "ready" if ok else "not_ready", "model": default.name}
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
        snapshot = engine.view.snapshot.to_json()
        snapshot["served"] = [
            {"name": m.name, "model_hash": m.model_hash, "available": engine.available(m)}
            for m in engine.models
        ]
        return snapshot

    async def run_choices(
        model: ServedModel,
        prompt: list[int],
        n: int,
        max_tokens: int,
        stop: list[str],
        params: SamplingParams,
        usage: Usage,
    ) -> AsyncIterator[list[ChoiceDelta]]:
        try:
            async for deltas in engine.generate(
                model, prompt, n=n, max_tokens=max_tokens, stops=stop, params=params, usage=usage
            ):
                yield deltas
        except NoRouteError as error:
            raise errors.unavailable(str(error), RETRY_AFTER) from error

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        model = resolve(body.model)
        if not model.chat:
            raise errors.invalid_request(
                f"'{model.name}' is a base model without a chat template: use /v1/completions",
                param="model",
            )
        prompt = model.head.encode_chat(body.template_messages())
        max_tokens = budget(model, prompt, body.effective_max_tokens(), "max_tokens")
        stop = body.stop_list()
        params = SamplingParams.from_request(body)
        params.check_vocab(model.head.vocab_size)
        n = body.n or 1
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        usage = Usage()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            chunks = _chat_chunks(
                run_choices(model, prompt, n, max_tokens, stop, params, usage),
                completion_id,
                created,
                model.name,
                n,
                usage,
                include_usage,
            )
            return EventSourceResponse(chunks, sep="\n", ping=15)
        texts = [""] * n
        finish: list[str | None] = [None] * n
        logprobs: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        async for deltas in run_choices(model, prompt, n, max_tokens, stop, params, usage):
            for delta in deltas:
                texts[delta.index] += delta.text
                finish[delta.index] = delta.finish_reason or finish[delta.index]
                lp = _logprobs_json(delta)
                if lp:
                    logprobs[delta.index].extend(lp["content"])
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model.name,
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": texts[i], "refusal": None},
                    "logprobs": {"content": logprobs[i]} if params.logprobs else None,
                    "finish_reason": finish[i] or "length",
                }
                for i in range(n)
            ],
            "usage": _usage_json(usage),
        }

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        model = resolve(body.model)
        prompts = body.prompts()
        if len(prompts) != 1 and body.stream:
            raise errors.invalid_request("stream=true takes a single prompt", param="prompt")
        n = body.n or 1
        stop = body.stop_list()
        params = SamplingParams.from_request(body)
        params.check_vocab(model.head.vocab_size)
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        encoded = [model.head.encode_text(p) for p in prompts]
        limits = [
            budget(model, ids, body.effective_max_tokens(16), "max_tokens") for ids in encoded
        ]
        if body.stream:
            usage = Usage()
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            chunks = _completion_chunks(
                run_choices(model, encoded[0], n, limits[0], stop, params, usage),
                completion_id,
                created,
                model.name,
                usage,
                include_usage,
            )
            return EventSourceResponse(chunks, sep="\n", ping=15)
        choices: list[dict[str, Any]] = []
        total = Usage()
        for p_index, (ids, limit) in enumerate(zip(encoded, limits, strict=True)):
            usage = Usage()
            texts = [""] * n
            finish: list[str | None] = [None] * n
            async for deltas in run_choices(model, ids, n, limit, stop, params, usage):
                for delta in deltas:
                    texts[delta.index] += delta.text
                    finish[delta.index] = delta.finish_reason or finish[delta.index]
            total.prompt_tokens += usage.prompt_tokens
            total.completion_tokens += usage.completion_tokens
            for i in range(n):
                choices.append(
                    {
                        "text": texts[i],
                        "index": p_index * n + i,
                        "logprobs": None,
                        "finish_reason": finish[i] or "length",
                    }
                )
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model.name,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
            "usage": _usage_json(total),
        }

    return app


def _usage_json(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _error_event(error: Exception) -> dict[str, str]:
    body = error.body() if isinstance(error, errors.APIError) else errors.internal_error().body()
    return {"data": json.dumps(body)}


async def _chat_chunks(
    source: AsyncIterator[list[ChoiceDelta]],
    completion_id: str,
    created: int,
    model: str,
    n: int,
    usage: Usage,
    include_usage: bool,
) -> AsyncIterator[dict[str, str]]:
    def chunk(
        choices: list[dict[str, Any]], usage_json: dict[str, int] | None = None
    ) -> dict[str, str]:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage_json
        return {"data": json.dumps(body)}

    try:
        yield chunk(
            [
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
                for i in range(n)
            ]
        )
        async for deltas in source:
            for delta in deltas:
                if not delta.text and not delta.finish_reason:
                    continue
                content = {"content": delta.text} if delta.text else {}
                yield chunk(
                    [
                        {
                            "index": delta.index,
                            "delta": content,
                            "logprobs": _logprobs_json(delta),
                            "finish_reason": delta.finish_reason,
                        }
                    ]
                )
        if include_usage:
            yield chunk([], _usage_json(usage))
    except Exception as error:
        yield _error_event(error)
    yield {"data": "[DONE]"}


async def _completion_chunks(
    source: AsyncIterator[list[ChoiceDelta]],
    completion_id: str,
    created: int,
    model: str,
    usage: Usage,
    include_usage: bool,
) -> AsyncIterator[dict[str, str]]:
    def chunk(
        choices: list[dict[str, Any]], usage_json: dict[str, int] | None = None
    ) -> dict[str, str]:
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage_json
        return {"data": json.dumps(body)}

    try:
        async for deltas in source:
            for delta in deltas:
                if delta.text or delta.finish_reason:
                    yield chunk(
                        [
                            {
                                "text": delta.text,
                                "index": delta.index,
                                "logprobs": None,
                                "finish_reason": delta.finish_reason,
                            }
                        ]
                    )
        if include_usage:
            yield chunk([], _usage_json(usage))
    except Exception as error:
        yield _error_event(error)
    yield {"data": "[DONE]"}
