"""The session store: longest live prefix wins, taking removes, expired records are pruned."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from gateway.store import BUCKET_TOKENS, KeptSession, MemoryStore, RedisStore, SessionStore

URL = "redis://127.0.0.1:6379/13"


def kept(sid: str, ids: list[int], ttl: float = 60.0) -> KeptSession:
    return KeptSession(
        "m", sid, tuple(ids), (("peer", 0, 30, ("/ip4/127.0.0.1/tcp/1",)),), time.time() + ttl
    )


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> SessionStore:
    if request.param == "memory":
        return MemoryStore()
    redis.Redis.from_url(URL).flushdb()
    return RedisStore(URL)


def test_longest_prefix_is_taken_once(store: SessionStore) -> None:
    base = list(range(BUCKET_TOKENS + 10))

    async def main() -> None:
        await store.put(kept("short", base))
        await store.put(kept("long", [*base, 7, 8]))
        await store.put(kept("other", [*base, 9]))
        prompt = [*base, 7, 8, 100]
        first = await store.take("m", prompt)
        assert first is not None and first.session_id == "long"
        second = await store.take("m", prompt)
        assert second is not None and second.session_id == "short"  # "long" was taken
        assert await store.take("m", base) is None  # a record must be a proper prefix
        assert await store.take("other-model", prompt) is None
        await store.close()

    asyncio.run(main())


def test_expired_records_are_never_taken_and_get_pruned(store: SessionStore) -> None:
    base = list(range(BUCKET_TOKENS + 5))

    async def main() -> None:
        await store.put(kept("old", base, ttl=-1))
        await store.put(kept("new", [*base, 1], ttl=60))  # prunes "old" from the bucket
        assert await store.take("m", [*base, 2]) is None
        if isinstance(store, MemoryStore):
            assert sum(len(b) for b in store.buckets.values()) == 1
        await store.close()

    asyncio.run(main())
