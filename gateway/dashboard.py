"""The dashboard: a live swarm map and a chat playground at `/`, plain HTML/CSS/JS, no build step.

Routes (kept out of the OpenAPI contract, open without an API key: they show no secrets):
`GET /` (the page), `GET /dashboard/static/{name}` (its script and stylesheet, package data in
`gateway/static/`) and `GET /dashboard/events`, a server-sent event stream of the swarm map
(`event: swarm`) sent when it changes and at least every `PUSH_PERIOD` seconds. The stream ends
when the client goes away or the server shuts down (sse-starlette cancels the generator).
The playground itself calls the public `/v1` API from the browser, with the key the user types.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from sse_starlette.sse import EventSourceResponse

from gateway import errors
from gateway.keys import KeyGuard
from gateway.swarm_map import SwarmMap

PUSH_PERIOD = 2.0  # seconds between pushes of an unchanged map
POLL_PERIOD = 0.5  # seconds between looks for a change
STATIC_TYPES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
VOLATILE = ("ts", "expires_in", "rtt_ms")  # fields that change on every refresh


def _static(name: str) -> bytes:
    return resources.files("gateway").joinpath("static", name).read_bytes()


def _fingerprint(body: dict[str, Any]) -> str:
    """The map without its per-refresh noise: a change here is worth a push at once."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return json.dumps(strip(body), sort_keys=True)


async def swarm_events(
    swarm_map: SwarmMap, guard: KeyGuard, period: float = PUSH_PERIOD, poll: float = POLL_PERIOD
) -> AsyncIterator[dict[str, str]]:
    """Server-sent events of the swarm map: on change, and every `period` seconds anyway."""
    sent_at, last = -1e9, ""
    while True:
        body = await swarm_map.to_json()
        body["auth_required"] = await guard.required()
        mark = _fingerprint(body)
        now = time.monotonic()
        if mark != last or now - sent_at >= period:
            yield {"event": "swarm", "data": json.dumps(body)}
            sent_at, last = now, mark
        await asyncio.sleep(poll)


def dashboard_router(swarm_map: SwarmMap, guard: KeyGuard) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(_static("index.html"), headers={"Cache-Control": "no-cache"})

    @router.get("/dashboard/static/{name}")
    async def static(name: str) -> Response:
        media_type = STATIC_TYPES.get(name)
        if media_type is None:
            raise errors.not_found(f"no dashboard file '{name}'")
        return Response(_static(name), media_type=media_type, headers={"Cache-Control": "no-cache"})

    @router.get("/dashboard/events")
    async def events() -> EventSourceResponse:
        return EventSourceResponse(
            swarm_events(swarm_map, guard),
            ping=15,
            send_timeout=10,
            headers={"X-Accel-Buffering": "no"},
        )

    return router
