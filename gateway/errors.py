"""OpenAI-shaped errors for the gateway.

Every error the gateway returns has OpenAI's shape::

    {"error": {"message": str, "type": str, "param": str | None, "code": str | None}}

``APIError`` carries one such error plus its HTTP status (and extra headers such as
``Retry-After``); raise it anywhere in a request handler. ``install_error_handlers(app)`` makes
FastAPI render ``APIError`` and everything else (request validation, malformed JSON, unknown
routes, wrong methods, unexpected exceptions) in that shape. ``BodySizeLimit`` is a pure ASGI
middleware answering 413 in that shape when a request body is too large.

Status → ``type`` conventions (those of OpenAI's API, as its clients see them):

====== ========================= ==============================================
status type                      code (default)
====== ========================= ==============================================
400    invalid_request_error     None (or a specific code)
401    invalid_request_error     invalid_api_key (what OpenAI itself returns)
404    invalid_request_error     model_not_found / unknown_url
405    invalid_request_error     method_not_allowed
413    invalid_request_error     request_too_large
429    requests                  rate_limit_exceeded (OpenAI's request-rate type)
500    server_error              None
503    server_error              service_unavailable (OpenAI's "overloaded" type)
====== ========================= ==============================================

The official SDKs pick their exception class from the status code alone, so ``type`` and
``code`` are informational. 429 and 503 carry ``Retry-After`` (whole seconds, rounded up) and
``retry-after-ms`` (which the ``openai`` SDK honours first).

Validation errors from pydantic map to 400 with ``param`` the dotted path of the offending field
inside the body (``messages.0.role``, ``temperature``, ``logit_bias.50256``). A schema validator
can choose its own message and a more precise ``param`` by raising
``PydanticCustomError(CUSTOM_ERROR_TYPE, message, {"param": "sub.path"})``: ``sub.path`` is
appended to the error's location and the message is used verbatim, except that ``<param>`` in it
is replaced by the full dotted ``param``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CUSTOM_ERROR_TYPE",
    "JSON_PARSE_MESSAGE",
    "PARAM_PLACEHOLDER",
    "APIError",
    "BodySizeLimit",
    "authentication_error",
    "error_body",
    "install_error_handlers",
    "internal_error",
    "invalid_request",
    "not_found",
    "parse_json_body",
    "payload_too_large",
    "rate_limited",
    "unavailable",
    "validation_error_to_api_error",
]

#: The pydantic error type a schema validator uses to choose its own message (see module doc).
CUSTOM_ERROR_TYPE = "openai_invalid_request"
#: Replaced by the full dotted ``param`` in the message of a ``CUSTOM_ERROR_TYPE`` error.
PARAM_PLACEHOLDER = "<param>"

JSON_PARSE_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The API expects a JSON payload, but what was sent was "
    "not valid JSON.)"
)
_NOT_AN_OBJECT_MESSAGE = (
    "We could not parse the JSON body of your request: the body must be a JSON object sent "
    "with 'Content-Type: application/json'."
)
_INTERNAL_MESSAGE = "The server had an error while processing your request. Sorry about that!"

_INVALID = "invalid_request_error"
_SERVER = "server_error"
_RATE = "requests"

ModelT = TypeVar("ModelT", bound=BaseModel)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The JSON body of an OpenAI error."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class APIError(Exception):
    """An error to return to the client, in OpenAI's shape, with its HTTP status and headers."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def __repr__(self) -> str:
        return (
            f"APIError(status={self.status}, message={self.message!r}, type={self.type!r}, "
            f"param={self.param!r}, code={self.code!r})"
        )

    def body(self) -> dict[str, Any]:
        """``{"error": {...}}``: the JSON body (also what an SSE ``data:`` error event carries)."""
        return error_body(self.message, self.type, self.param, self.code)

    def to_response(self) -> JSONResponse:
        """A ``JSONResponse`` with this error's status, body and headers."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers or None)


def _retry_headers(retry_after: float | None) -> dict[str, str]:
    if retry_after is None:
        return {}
    seconds = max(0.0, float(retry_after))
    return {
        "Retry-After": str(math.ceil(seconds)),
        "retry-after-ms": str(math.ceil(seconds * 1000)),
    }


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400 ``invalid_request_error``."""
    return APIError(400, message, _INVALID, param, code)


def authentication_error(
    message: str = "Incorrect API key provided.", code: str | None = "invalid_api_key"
) -> APIError:
    """401 (``invalid_request_error`` / ``invalid_api_key``, as OpenAI answers)."""
    return APIError(401, message, _INVALID, None, code)


def not_found(
    message: str, param: str | None = "model", code: str | None = "model_not_found"
) -> APIError:
    """404, by default for a model nobody serves."""
    return APIError(404, message, _INVALID, param, code)


def payload_too_large(max_bytes: int | None = None) -> APIError:
    """413 ``request_too_large``."""
    limit = f" The limit is {max_bytes} bytes." if max_bytes is not None else ""
    return APIError(413, "Request body too large." + limit, _INVALID, None, "request_too_large")


def rate_limited(
    retry_after: float | None,
    message: str = "Rate limit reached. Please retry after a short wait.",
    code: str | None = "rate_limit_exceeded",
) -> APIError:
    """429 with ``Retry-After`` / ``retry-after-ms`` headers."""
    return APIError(429, message, _RATE, None, code, _retry_headers(retry_after))


def unavailable(
    message: str, retry_after: float | None = None, code: str | None = "service_unavailable"
) -> APIError:
    """503 ``server_error`` (no capacity, swarm unreachable...) with ``Retry-After`` headers."""
    return APIError(503, message, _SERVER, None, code, _retry_headers(retry_after))


def internal_error(message: str = _INTERNAL_MESSAGE, code: str | None = None) -> APIError:
    """500 ``server_error``; the default message leaks nothing."""
    return APIError(500, message, _SERVER, None, code)


# ---------------------------------------------------------------------------------------------
# validation errors


def _loc_to_param(loc: Sequence[Any], strip_body: bool) -> str | None:
    parts = list(loc)
    if strip_body and parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        source = parts.pop(0)
        if source != "body" and not parts:
            return str(source)
    return ".".join(str(p) for p in parts) if parts else None


def _clean_msg(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    msg = msg.strip()
    return msg if msg.endswith((".", "!", "?")) else msg + "."


def validation_error_to_api_error(
    errors: Sequence[Mapping[str, Any]], *, strip_body: bool = True
) -> APIError:
    """A 400 for pydantic/FastAPI validation errors: the first error names ``param``.

    ``strip_body``: the locations start with ``"body"`` (FastAPI); False for errors of a plain
    ``Model.model_validate`` call.
    """
    if not errors:
        return invalid_request("Invalid request.")
    err = errors[0]
    kind = str(err.get("type", ""))
    loc: Sequence[Any] = tuple(err.get("loc", ()))
    msg = str(err.get("msg", "Invalid value"))
    ctx = err.get("ctx") or {}

    if kind == "json_invalid":
        return invalid_request(JSON_PARSE_MESSAGE)
    body_level = (strip_body and tuple(loc) == ("body",)) or (not strip_body and not loc)
    if body_level and kind != CUSTOM_ERROR_TYPE:
        return invalid_request(_NOT_AN_OBJECT_MESSAGE)

    param = _loc_to_param(loc, strip_body)
    if kind == CUSTOM_ERROR_TYPE:
        sub = ctx.get("param") if isinstance(ctx, Mapping) else None
        if sub:
            param = f"{param}.{sub}" if param else str(sub)
        return invalid_request(msg.replace(PARAM_PLACEHOLDER, param or "body"), param)
    if kind == "extra_forbidden":
        return invalid_request(f"Unrecognized request argument supplied: {param}", param)
    if kind == "missing":
        return invalid_request(f"Missing required parameter: '{param}'.", param)
    return invalid_request(f"Invalid value for '{param}': {_clean_msg(msg)}", param)


def parse_json_body(model: type[ModelT], body: bytes | str) -> ModelT:
    """Validate a raw JSON body against ``model``, raising a 400 ``APIError`` on any problem.

    For handlers that read the body themselves instead of declaring a body parameter.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise invalid_request(JSON_PARSE_MESSAGE) from None
    if not isinstance(data, dict):
        raise invalid_request(_NOT_AN_OBJECT_MESSAGE)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error_to_api_error(e.errors(include_url=False), strip_body=False) from None


# ---------------------------------------------------------------------------------------------
# handlers


def _status_type(status: int) -> str:
    if status == 429:
        return _RATE
    return _SERVER if status >= 500 else _INVALID


def _http_exception_error(request: Request, exc: StarletteHTTPException) -> APIError:
    status = exc.status_code
    detail = exc.detail
    headers = dict(exc.headers or {})
    if status == 404 and detail == "Not Found":
        message = f"Invalid URL ({request.method} {request.url.path})"
        return APIError(404, message, _INVALID, None, "unknown_url", headers)
    if status == 405 and detail == "Method Not Allowed":
        message = f"Invalid method for URL ({request.method} {request.url.path})"
        return APIError(405, message, _INVALID, None, "method_not_allowed", headers)
    if status == 413:
        return APIError(413, str(detail), _INVALID, None, "request_too_large", headers)
    if detail == "There was an error parsing the body":
        return APIError(status, JSON_PARSE_MESSAGE, _INVALID, None, None, headers)
    message = detail if isinstance(detail, str) else json.dumps(detail, default=str)
    if status >= 500:
        message = _INTERNAL_MESSAGE
    return APIError(status, message, _status_type(status), None, None, headers)


Handler = Callable[[Request, Any], Awaitable[Response]]


def install_error_handlers(app: FastAPI) -> None:
    """Make ``app`` answer every error in OpenAI's shape (see the module doc)."""

    async def on_api_error(request: Request, exc: APIError) -> Response:
        return exc.to_response()

    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        return validation_error_to_api_error(list(exc.errors())).to_response()

    async def on_http_exception(request: Request, exc: StarletteHTTPException) -> Response:
        return _http_exception_error(request, exc).to_response()

    async def on_exception(request: Request, exc: Exception) -> Response:
        # Starlette re-raises ``exc`` after this response, so the server logs the traceback.
        if isinstance(exc, APIError):  # raised where only the catch-all sees it
            return exc.to_response()
        return internal_error().to_response()

    handlers: list[tuple[type[Exception], Handler]] = [
        (APIError, on_api_error),
        (RequestValidationError, on_validation_error),
        (StarletteHTTPException, on_http_exception),
        (Exception, on_exception),
    ]
    for exc_class, handler in handlers:
        app.add_exception_handler(exc_class, handler)


# ---------------------------------------------------------------------------------------------
# body size


class _BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` once the body passes the limit (FastAPI re-raises HTTP errors)."""


class BodySizeLimit:
    """Pure ASGI middleware: 413 in OpenAI's shape for bodies over ``max_bytes``.

    Checks ``Content-Length`` first (answering without reading the body), then counts the bytes
    actually received (chunked uploads, lying headers). Whatever the inner app does with the
    failure, the client gets this middleware's 413 unless a response had already started.
    ``app.add_middleware(BodySizeLimit, max_bytes=...)``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Send) -> None:
        err = payload_too_large(self.max_bytes)
        body = json.dumps(err.body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": err.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    break
                if declared > self.max_bytes:
                    await self._reject(send)
                    return
                break

        received = 0
        exceeded = False
        started = False
        replaced = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge(413, payload_too_large(self.max_bytes).message)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                started = True
                if exceeded:
                    replaced = True
                    await self._reject(send)
                    return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if exceeded and not started:
                await self._reject(send)
                return
            raise
