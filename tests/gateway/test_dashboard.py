"""The dashboard's routes without a swarm: open without a key, out of the contract; the event
generator pushes on change and every period; the swarm map's peer states."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.dashboard import swarm_events
from gateway.engine import Engine
from gateway.keys import KeyGuard
from gateway.openapi import build_openapi
from gateway.routing import Bans
from gateway.swarm_map import SwarmMap
from swarm.records import PeerRecord
from swarm.swarm_view import PeerView


class NoModels:
    def __init__(self) -> None:
        self.models: list[Any] = []
        self.bans = Bans()

    def available(self, model: Any) -> bool:
        return False


def test_page_and_files_need_no_key_while_v1_does() -> None:
    c = TestClient(create_app(cast(Engine, NoModels()), api_keys=["sk-secret"]))
    page = c.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/dashboard/static/dashboard.js" in page.text and "sk-secret" not in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    script = c.get("/dashboard/static/dashboard.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert c.get("/dashboard/static/dashboard.css").status_code == 200
    missing = c.get("/dashboard/static/..%2Fapp.py")
    assert missing.status_code == 404 and missing.json()["error"]["message"]
    assert c.get("/v1/models").status_code == 401


def test_dashboard_routes_stay_out_of_the_contract() -> None:
    paths = build_openapi()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/dashboard")]


class FakeMap:
    def __init__(self) -> None:
        self.body: dict[str, Any] = {"ts": 0.0, "models": [], "served": []}

    async def to_json(self) -> dict[str, Any]:
        self.body["ts"] += 1.0  # volatile: not a change by itself
        return dict(self.body)


def test_events_push_on_change_and_every_period() -> None:
    async def main() -> list[float]:
        fake = FakeMap()
        events = swarm_events(cast(SwarmMap, fake), KeyGuard(), period=0.3, poll=0.02)
        loop = asyncio.get_running_loop()
        times = []
        first = await anext(events)
        assert first["event"] == "swarm" and '"auth_required": false' in first["data"]
        start = loop.time()
        await anext(events)  # unchanged: only after the period
        times.append(loop.time() - start)
        fake.body = {**fake.body, "models": [{"model_hash": "h"}]}
        start = loop.time()
        await anext(events)  # changed: at the next look
        times.append(loop.time() - start)
        await events.aclose()
        return times

    unchanged, changed = asyncio.run(main())
    assert 0.25 < unchanged < 1.0 and changed < 0.2


def peer(start: int, end: int, reachable: bool = True, free: int = 100) -> PeerView:
    record = PeerRecord("p", (), "m", start, end, cache_tokens_free=free)
    return PeerView(record, reachable=reachable)


def test_peer_states() -> None:
    smap = SwarmMap(cast(Engine, NoModels()))
    info = {"start": 0, "end": 10, "cache_tokens_free": 5, "queue_len": 0}
    assert smap._status(peer(0, 10), info) == "online"
    assert smap._status(peer(0, 10, reachable=False), info) == "unreachable"
    assert smap._status(peer(5, 15), info) == "moving"  # its live span is not its record's
    assert smap._status(peer(0, 10), {**info, "moving": True}) == "moving"
    assert smap._status(peer(0, 10), {**info, "cache_tokens_free": 0}) == "busy"
    assert smap._status(peer(0, 10), {**info, "queue_len": 2}) == "busy"
    assert smap._status(peer(0, 10, free=0), None) == "busy"
    smap.engine.bans.ban("p")
    assert smap._status(peer(0, 10), info) == "busy"
