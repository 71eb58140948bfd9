"""The gateway's shared session context: which peer sessions hold the KV caches of which tokens.

After a turn, the gateway leaves the turn's peer sessions alive for a while and records
`prefix → session`; a later request whose prompt starts with those tokens takes the record and
re-attaches the caches, sending only its new tokens. Records are keyed by the model and the hash
of their first tokens; each holds the full token ids, so the longest common prefix wins (the
session rolls back to it). Taking a record removes it (one request per kept session).
`RedisStore` shares records between gateway replicas; `MemoryStore` is the embedded default
with the same interface.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

log = logging.getLogger("swarmgate.store")

KEY_PREFIX = "sg:"
# records are bucketed by the hash of their first tokens: few enough that chats which differ
# only after a shared system prompt (SmolLM2's default: 24 tokens) meet in one bucket and reuse it
BUCKET_TOKENS = 16
MAX_BUCKET_RECORDS = 64  # per bucket: the records closest to expiry go first


@dataclass(frozen=True)
class KeptSession:
    model_hash: str
    session_id: str
    token_ids: tuple[int, ...]  # the positions the peers' caches hold
    hops: tuple[tuple[str, int, int, tuple[str, ...]], ...]  # (peer id, start, end, addrs)
    expires: float

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> KeptSession:
        data: dict[str, Any] = json.loads(text)
        return cls(
            model_hash=str(data["model_hash"]),
            session_id=str(data["session_id"]),
            token_ids=tuple(int(t) for t in data["token_ids"]),
            hops=tuple((str(p), int(s), int(e), tuple(a)) for p, s, e, a in data["hops"]),
            expires=float(data["expires"]),
        )


def bucket_key(model_hash: str, token_ids: Sequence[int]) -> str:
    head = ",".join(str(t) for t in token_ids[:BUCKET_TOKENS])
    digest = hashlib.sha256(f"{model_hash}|{head}".encode()).hexdigest()[:40]
    return f"{KEY_PREFIX}prefix:{digest}"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def reusable(kept: KeptSession, prompt: Sequence[int]) -> int:
    """Cached positions of `kept` a request for `prompt` can keep: their common prefix, less
    the prompt's last token when the record covers all of it (its logits must be computed)."""
    return min(common_prefix(kept.token_ids, prompt), len(prompt) - 1)


def best_match(
    candidates: Sequence[KeptSession], prompt: Sequence[int], now: float
) -> list[KeptSession]:
    """Live records that share a prefix with `prompt`, the most reusable positions first.

    A record need not be a prefix of the prompt: a reply re-tokenized in the next turn's
    template may split differently from the ids that were sampled (one double-newline token
    sampled, two newline tokens re-encoded), and the caches hold good positions up to that
    point; the session is rolled back to the common prefix when it is re-attached.
    """
    scored = [(reusable(c, prompt), c) for c in candidates if c.expires > now]
    # most positions kept first; among equals the least to roll back
    ranked = sorted(
        (nc for nc in scored if nc[0] > 0), key=lambda nc: (-nc[0], len(nc[1].token_ids))
    )
    return [c for _, c in ranked]


def _beyond_limit(records: Iterable[KeptSession], room: int = 0) -> list[str]:
    """Session ids to drop so that a bucket keeps `MAX_BUCKET_RECORDS - room` records: those
    closest to expiry (the peers still end their sessions on their own idle timeout)."""
    ordered = sorted(records, key=lambda r: r.expires)
    return [r.session_id for r in ordered[: max(0, len(ordered) - MAX_BUCKET_RECORDS + room)]]


class SessionStore(Protocol):
    name: str

    async def put(self, kept: KeptSession) -> None: ...

    async def take(self, model_hash: str, prompt: Sequence[int]) -> KeptSession | None: ...

    async def healthy(self) -> bool: ...

    async def close(self) -> None: ...


class MemoryStore:
    """In-process store: the embedded default when no Redis URL is given."""

    name = "memory"

    def __init__(self) -> None:
        self.buckets: dict[str, dict[str, KeptSession]] = {}

    async def put(self, kept: KeptSession) -> None:
        if len(kept.token_ids) < BUCKET_TOKENS:
            return
        now = time.time()
        for key in [
            k for k, b in self.buckets.items() if all(r.expires <= now for r in b.values())
        ]:
            del self.buckets[key]  # buckets whose records all expired
        bucket = self.buckets.setdefault(bucket_key(kept.model_hash, kept.token_ids), {})
        for stale in [sid for sid, r in bucket.items() if r.expires <= now]:
            del bucket[stale]
        for extra in _beyond_limit(bucket.values(), room=1):  # room for the new record
            del bucket[extra]
        bucket[kept.session_id] = kept

    async def take(self, model_hash: str, prompt: Sequence[int]) -> KeptSession | None:
        bucket = self.buckets.get(bucket_key(model_hash, prompt), {})
        now = time.time()
        for stale in [sid for sid, kept in bucket.items() if kept.expires <= now]:
            del bucket[stale]
        for match in best_match(list(bucket.values()), prompt, now):
            return bucket.pop(match.session_id)
        return None

    async def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        self.buckets.clear()


class RedisStore:
    """Records in Redis hashes (one per bucket), shared by every gateway on the same Redis."""

    name = "redis"

    def __init__(self, url: str, timeout: float = 1.0) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    async def put(self, kept: KeptSession) -> None:
        if len(kept.token_ids) < BUCKET_TOKENS:
            return
        key = bucket_key(kept.model_hash, kept.token_ids)
        ttl = max(1, int(kept.expires - time.time()))
        stale: list[Any] = []
        records: dict[Any, KeptSession] = {}
        for field_name, value in (await self.client.hgetall(key)).items():
            try:
                records[field_name] = record = KeptSession.from_json(value)
                if record.expires <= time.time():
                    stale.append(field_name)
            except (ValueError, KeyError, TypeError):
                stale.append(field_name)
        live = [r for f, r in records.items() if f not in stale]
        if len(live) >= MAX_BUCKET_RECORDS:
            stale += _beyond_limit(live, room=1)  # room for the new record
        async with self.client.pipeline(transaction=True) as pipe:
            if stale:
                pipe.hdel(key, *stale)
            pipe.hset(key, kept.session_id, kept.to_json())
            pipe.expire(key, ttl)
            await pipe.execute()

    async def take(self, model_hash: str, prompt: Sequence[int]) -> KeptSession | None:
        key = bucket_key(model_hash, prompt)
        raw = await self.client.hgetall(key)
        records = []
        for value in raw.values():
            try:
                records.append(KeptSession.from_json(value))
            except (ValueError, KeyError, TypeError):
                continue
        for match in best_match(records, prompt, time.time()):
            if await self.client.hdel(key, match.session_id):
                return match  # we removed it: nobody else will take it
        return None

    async def healthy(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self.client.aclose()
