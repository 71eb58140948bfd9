"""The swarm as one process sees it: who serves which blocks of which model, how fast, how far.

`SwarmView.refresh()` rebuilds a `SwarmSnapshot` from the DHT: peer records of the peers this
node knows, the model records they point to, the providers of every block of each model and
their peer records; expired and offline records are dropped, and every remaining peer is pinged
with our own ping (a peer that does not answer stays listed as unreachable but covers nothing).
The DHT is a hint; the streams a gateway opens are the truth.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from swarm.records import (
    Clock,
    ModelRecord,
    PeerRecord,
    block_key,
    decode_model_record,
    decode_peer_record,
    model_key,
    peer_key,
)
from swarm.wire import WireError

T = TypeVar("T")


class _Node(Protocol):
    peer_id: str

    async def get(self, key: str) -> bytes | None: ...

    async def find_providers(self, key: str, count: int = 20) -> list[tuple[str, list[str]]]: ...

    async def known_peers(self) -> list[tuple[str, list[str]]]: ...

    async def ping(
        self, peer_id: str, addrs: list[str] | None = None, timeout: float = 5.0
    ) -> float: ...


@dataclass
class PeerView:
    record: PeerRecord
    rtt: float | None = None  # seconds, from our own ping; None when not measured
    reachable: bool = True

    @property
    def peer_id(self) -> str:
        return self.record.peer_id

    def to_json(self, now: float) -> dict[str, Any]:
        r = self.record
        return {
            "peer_id": r.peer_id,
            "start": r.start,
            "end": r.end,
            "dtype": r.dtype,
            "quant": r.quant,
            "throughput_decode": r.throughput_decode,
            "throughput_prefill": r.throughput_prefill,
            "cache_tokens_free": r.cache_tokens_free,
            "queue_len": r.queue_len,
            "version": r.version,
            "state": r.state,
            "reachable": self.reachable,
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "addrs": list(r.addrs),
            "expires_in": round(r.expires - now, 1),
        }


@dataclass
class ModelView:
    model_hash: str
    record: ModelRecord | None
    num_blocks: int
    peers: list[PeerView] = field(default_factory=list)

    def servers_of(self, block: int) -> list[PeerView]:
        """Reachable online peers whose span holds `block`."""
        return [p for p in self.peers if p.reachable and block in p.record.blocks]

    def coverage(self) -> list[int]:
        """Number of reachable servers of each block."""
        return [len(self.servers_of(b)) for b in range(self.num_blocks)]

    @property
    def complete(self) -> bool:
        return self.num_blocks > 0 and all(self.coverage())

    def to_json(self, now: float) -> dict[str, Any]:
        rec = self.record
        return {
            "model_hash": self.model_hash,
            "name": rec.name if rec else None,
            "aliases": list(rec.aliases) if rec else [],
            "family": rec.family if rec else None,
            "hidden_size": rec.hidden_size if rec else None,
            "num_blocks": self.num_blocks,
            "coverage": self.coverage(),
            "complete": self.complete,
            "peers": [
                p.to_json(now)
                for p in sorted(self.peers, key=lambda p: (p.record.start, p.peer_id))
            ],
        }


@dataclass
class SwarmSnapshot:
    ts: float
    models: dict[str, ModelView] = field(default_factory=dict)

    def peers(self) -> list[PeerView]:
        return [p for m in self.models.values() for p in m.peers]

    def to_json(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "models": [self.models[h].to_json(self.ts) for h in sorted(self.models)],
        }


async def _gather_limited(
    limit: int, fns: Sequence[Callable[[], Awaitable[T]]]
) -> list[T | BaseException]:
    sem = asyncio.Semaphore(limit)

    async def run(fn: Callable[[], Awaitable[T]]) -> T:
        async with sem:
            return await fn()

    return await asyncio.gather(*(run(f) for f in fns), return_exceptions=True)


class SwarmView:
    """Refreshable view of the swarm through one node's DHT."""

    def __init__(
        self,
        node: _Node,
        *,
        ping: bool = True,
        ping_timeout: float = 2.0,
        concurrency: int = 8,
        max_providers: int = 20,
        clock: Clock = time.time,
        providers_ttl: float = 15.0,
    ) -> None:
        self.node = node
        # provider lookups (one per block, each a DHT walk) are reused for `providers_ttl`
        # seconds; peer records are fetched on every refresh
        self.providers_ttl = providers_ttl
        self._provider_cache: dict[str, tuple[float, set[str]]] = {}
        self.ping = ping
        self.ping_timeout = ping_timeout
        self.concurrency = concurrency
        self.max_providers = max_providers
        self.clock = clock
        self.snapshot = SwarmSnapshot(ts=0.0)

    async def _peer_records(self, peer_ids: Sequence[str]) -> dict[str, PeerRecord]:
        ids = list(dict.fromkeys(peer_ids))

        def fetch(pid: str) -> Callable[[], Awaitable[bytes | None]]:
            return lambda: self.node.get(peer_key(pid))

        values = await _gather_limited(self.concurrency, [fetch(p) for p in ids])
        now = self.clock()
        out: dict[str, PeerRecord] = {}
        for pid, value in zip(ids, values, strict=True):
            if isinstance(value, BaseException):
                if not isinstance(value, WireError):
                    raise value
                continue
            rec = decode_peer_record(value, peer_key(pid), now)
            if rec is not None and rec.online and not rec.expired(now):
                out[pid] = rec
        return out

    async def _cached_providers(self, model_hash: str, num_blocks: int, fresh: bool) -> set[str]:
        now = self.clock()
        cached = self._provider_cache.get(model_hash)
        if not fresh and cached is not None and now - cached[0] < self.providers_ttl:
            return cached[1]
        found = await self._providers(model_hash, num_blocks)
        self._provider_cache[model_hash] = (now, found)
        return found

    async def _providers(self, model_hash: str, num_blocks: int) -> set[str]:
        def find(block: int) -> Callable[[], Awaitable[list[tuple[str, list[str]]]]]:
            return lambda: self.node.find_providers(
                block_key(model_hash, block), self.max_providers
            )

        results = await _gather_limited(self.concurrency, [find(b) for b in range(num_blocks)])
        found: set[str] = set()
        for r in results:
            if isinstance(r, BaseException):
                if not isinstance(r, WireError):
                    raise r
                continue
            found.update(pid for pid, _addrs in r)
        return found

    async def _model(self, model_hash: str) -> ModelRecord | None:
        key = model_key(model_hash)
        try:
            value = await self.node.get(key)
        except WireError:
            return None
        return decode_model_record(value, key, self.clock())

    async def _measure(self, peers: Sequence[PeerView]) -> None:
        def probe(p: PeerView) -> Callable[[], Awaitable[float]]:
            return lambda: self.node.ping(p.peer_id, list(p.record.addrs), self.ping_timeout)

        results = await _gather_limited(self.concurrency, [probe(p) for p in peers])
        for p, r in zip(peers, results, strict=True):
            if isinstance(r, BaseException):
                if not isinstance(r, WireError):
                    raise r
                p.rtt, p.reachable = None, False
            else:
                p.rtt, p.reachable = r, True

    async def refresh(
        self, model_hashes: Sequence[str] | None = None, fresh: bool = False
    ) -> SwarmSnapshot:
        """Rebuild the snapshot; `model_hashes` limits it to those models (default: every
        model that a known peer serves). `fresh` looks providers up again even when the last
        lookup is recent."""
        known = [pid for pid, _addrs in await self.node.known_peers()]
        records = await self._peer_records([*known, self.node.peer_id])
        wanted = list(model_hashes) if model_hashes is not None else []
        for rec in records.values():
            if model_hashes is None and rec.model_hash not in wanted:
                wanted.append(rec.model_hash)
        models: dict[str, ModelView] = {}
        for model_hash in wanted:
            mrec = await self._model(model_hash)
            ends = [r.end for r in records.values() if r.model_hash == model_hash]
            num_blocks = mrec.num_blocks if mrec else max(ends, default=0)
            providers = await self._cached_providers(model_hash, num_blocks, fresh)
            missing = [p for p in providers if p not in records]
            records.update(await self._peer_records(missing))
            serving = [PeerView(r) for r in records.values() if r.model_hash == model_hash]
            models[model_hash] = ModelView(model_hash, mrec, num_blocks, serving)
        views = [p for m in models.values() for p in m.peers if p.peer_id != self.node.peer_id]
        if self.ping:
            await self._measure(views)
        self.snapshot = SwarmSnapshot(ts=self.clock(), models=models)
        return self.snapshot
