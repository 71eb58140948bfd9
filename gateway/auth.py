"""API-key checks as a pure ASGI middleware: `/v1/*` needs `Authorization: Bearer <key>`
when keys are configured.

Pure ASGI rather than Starlette's `BaseHTTPMiddleware`: that one runs the app in a task of its
own and passes every message of a response through a memory stream, a task hop per SSE chunk
on the hot path of streaming. The key's record goes to `request.state.key` (None without keys
or outside `/v1`).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import errors
from gateway.keys import KeyGuard


class RequireApiKey:
    def __init__(self, app: ASGIApp, guard: KeyGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["key"] = None
        if route_path(scope).startswith("/v1") and await self.guard.required():
            scheme, _, given = Headers(scope=scope).get("authorization", "").partition(" ")
            info = await self.guard.lookup(given.strip()) if scheme.lower() == "bearer" else None
            if info is None:
                await errors.authentication_error().to_response()(scope, receive, send)
                return
            state["key"] = info
        await self.app(scope, receive, send)


def route_path(scope: Scope) -> str:
    """The path the router matches: without the `root_path` a server or a mount put in front
    (behind `--root-path /api`, `/api/v1/models` is routed as `/v1/models` and needs a key)."""
    path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :]
    return path
