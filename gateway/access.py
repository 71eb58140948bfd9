"""Request ids and the access log: one line per HTTP request under the `swarmgate.access` logger.

`AccessLog` is a pure ASGI middleware, so a streaming response is logged when its stream ends,
with the final token counts. Every response carries `x-request-id`: the client's own when it is
a sane short string, a fresh one otherwise. Handlers add what they know (model, usage, stream)
to the request's `AccessRecord` through `access_record(request)`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from swarm import busy_poll, trace

log = logging.getLogger("swarmgate.access")

REQUEST_ID_HEADER = "x-request-id"
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
STATE_KEY = "access"


class _Usage(Protocol):
    prompt_tokens: int
    completion_tokens: int


@dataclass
class AccessRecord:
    """What the access line says beyond method, path and status (filled in by handlers)."""

    request_id: str
    model: str | None = None
    stream: bool | None = None
    usage: _Usage | None = None
    # a stream's first token: the next body sent carries it (`token_next`), then the seconds
    # from the request's arrival to that body handed to the server
    first_token_pending: bool = False
    first_token_seconds: float | None = None

    def note(self, model: str, usage: _Usage, stream: bool) -> None:
        self.model, self.usage, self.stream = model, usage, stream

    def token_next(self) -> None:
        """The next body sent holds the stream's first token (called once, by the stream)."""
        if self.first_token_seconds is None:
            self.first_token_pending = True


def access_record(request: Request) -> AccessRecord:
    """The request's record (a detached one when the middleware is not installed)."""
    record = request.scope.get("state", {}).get(STATE_KEY)
    return record if isinstance(record, AccessRecord) else AccessRecord("")


def request_id(incoming: str | None) -> str:
    """The client's id when it is sane, else a fresh one."""
    if incoming and SANE_REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def route_of(scope: Scope) -> str:
    """The matched route's template (bounded label values), or `unmatched`."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class AccessLog:
    """Log every HTTP request once, when its response (stream included) is over."""

    def __init__(
        self,
        app: ASGIApp,
        on_done: Callable[[str, str, int], None] | None = None,
        on_first_token: Callable[[str, float], None] | None = None,
    ) -> None:
        self.app = app
        self.on_done = on_done  # (route template, method, status), e.g. a request counter
        self.on_first_token = on_first_token  # (model, seconds since the request arrived)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        trace.mark("http.start")
        if scope.get("method") == "POST" and str(scope.get("path", "")).startswith("/v1/"):
            busy_poll.poke()  # a generation: its messages to the peers follow at once
        record = AccessRecord(request_id(Headers(scope=scope).get(REQUEST_ID_HEADER)))
        scope.setdefault("state", {})[STATE_KEY] = record
        status = 500  # what the client gets if the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = record.request_id
            await send(message)
            if record.first_token_pending and message["type"] == "http.response.body":
                record.first_token_pending = False
                seconds = record.first_token_seconds = time.perf_counter() - began
                trace.mark("http.token")
                if self.on_first_token is not None and record.model is not None:
                    self.on_first_token(record.model, seconds)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            trace.mark("http.end")
            self._log(scope, record, status, time.perf_counter() - began)

    def _log(self, scope: Scope, record: AccessRecord, status: int, seconds: float) -> None:
        method, path = str(scope.get("method", "")), str(scope.get("path", ""))
        if self.on_done is not None:
            self.on_done(route_of(scope), method, status)
        usage = record.usage
        fields = {
            "request_id": record.request_id,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
            "first_token_ms": (
                round(record.first_token_seconds * 1000, 2)
                if record.first_token_seconds is not None
                else None
            ),
            "model": record.model,
            "stream": record.stream,
            "prompt_tokens": usage.prompt_tokens if usage is not None else None,
            "completion_tokens": usage.completion_tokens if usage is not None else None,
        }
        known = {key: value for key, value in fields.items() if value is not None}
        log.info("%s %s %d %.1fms", method, path, status, seconds * 1000, extra=known)
