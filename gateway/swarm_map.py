"""The swarm map the gateway publishes (`/v1/swarm`, the dashboard): the swarm view's snapshot
plus each reachable peer's live load, asked over the peer's `info` protocol.

Peer records in the DHT carry a span, dtype, quantization, throughput and free cache; `info`
adds what changes by the second: open sessions, cache tokens used out of the total, queued
steps. Answers are cached for `max_age` seconds, so many viewers cost the swarm one `info`
request per peer per period. Each peer gets a `status`:
`unreachable` (no ping answer), `moving` (reloading another span: it says so, or its live span
differs from its record), `busy` (no free cache, queued steps, or it failed for us recently)
or `online`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.engine import Engine
from swarm.protocol import INFO_PROTOCOL
from swarm.swarm_view import PeerView

INFO_TIMEOUT = 2.0  # seconds one `info` request may take
INFO_FIELDS = (
    "sessions",
    "sessions_active",
    "sessions_kept",
    "cache_tokens_total",
    "cache_tokens_used",
    "cache_tokens_free",
    "queue_len",
)


class SwarmMap:
    """Builds the JSON swarm map for one engine; `info` answers are shared between callers."""

    def __init__(self, engine: Engine, max_age: float = 1.5) -> None:
        self.engine = engine  # not touched before the first request (the OpenAPI build has none)
        self.max_age = max_age
        self._info: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._lock = asyncio.Lock()

    async def to_json(self) -> dict[str, Any]:
        engine = self.engine
        snapshot = engine.view.snapshot
        await self._refresh_info(snapshot.peers())
        body = snapshot.to_json()
        for model_json, model_view in zip(
            body["models"], (snapshot.models[h] for h in sorted(snapshot.models)), strict=True
        ):
            peers = {p.peer_id: p for p in model_view.peers}
            for peer_json in model_json["peers"]:
                peer_json.update(self._live(peers[peer_json["peer_id"]]))
        body["served"] = [
            {"name": m.name, "model_hash": m.model_hash, "available": engine.available(m)}
            for m in engine.models
        ]
        return body

    def _live(self, peer: PeerView) -> dict[str, Any]:
        """The live fields of one peer (None where its `info` did not answer)."""
        info = self._info.get(peer.peer_id, (0.0, None))[1] if peer.reachable else None
        live: dict[str, Any] = {name: (info or {}).get(name) for name in INFO_FIELDS}
        live["status"] = self._status(peer, info)
        return live

    def _status(self, peer: PeerView, info: dict[str, Any] | None) -> str:
        record = peer.record
        if not peer.reachable:
            return "unreachable"
        if info is not None and (
            info.get("moving") or (info.get("start"), info.get("end")) != (record.start, record.end)
        ):
            return "moving"
        free = info.get("cache_tokens_free") if info is not None else record.cache_tokens_free
        queued = info.get("queue_len") if info is not None else record.queue_len
        if free == 0 or (queued or 0) > 0 or self.engine.bans.banned(peer.peer_id):
            return "busy"
        return "online"

    async def _refresh_info(self, peers: list[PeerView]) -> None:
        async with self._lock:  # concurrent viewers wait for one round of requests
            now = time.monotonic()
            stale = {
                p.peer_id: p
                for p in peers
                if p.reachable
                and p.peer_id != self.engine.node.peer_id
                and now - self._info.get(p.peer_id, (-1e9, None))[0] >= self.max_age
            }
            if not stale:
                return
            answers = await asyncio.gather(*(self._ask(p) for p in stale.values()))
            now = time.monotonic()
            for peer_id, info in zip(stale, answers, strict=True):
                self._info[peer_id] = (now, info)
            known = {p.peer_id for p in peers}
            for peer_id in [p for p in self._info if p not in known]:
                del self._info[peer_id]

    async def _ask(self, peer: PeerView) -> dict[str, Any] | None:
        try:
            frame = await self.engine.node.request(
                peer.peer_id,
                INFO_PROTOCOL,
                {"type": "info"},
                timeout=INFO_TIMEOUT,
                addrs=list(peer.record.addrs),
            )
        except Exception:
            return None
        return dict(frame.header)
