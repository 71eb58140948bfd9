"""The session store: longest common prefix wins, taking removes, expired records are pruned."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from gateway.store import (
    BUCKET_TOKENS,
    MAX_BUCKET_RECORDS,
    KeptSession,
    MemoryStore,
    RedisStore,
    SessionStore,
    reusable,
)

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
        assert await store.take("other-model", prompt) is None
        # "other" diverges after `base`: its caches are good for all of `base` but the last
        # token, whose logits the request needs
        third = await store.take("m", base)
        assert third is not None and third.session_id == "other"
        assert reusable(third, base) == len(base) - 1
        assert await store.take("m", prompt) is None
        await store.close()

    asyncio.run(main())


def test_expired_records_are_never_taken_and_get_pruned(store: SessionStore) -> None:
    base = list(range(BUCKET_TOKENS + 5))

    async def main() -> None:
        await store.put(kept("old", base, ttl=-1))
        await store.put(kept("new", [*base, 1], ttl=60))  # prunes "old" from the bucket
        if isinstance(store, MemoryStore):
            assert sum(len(b) for b in store.buckets.values()) == 1
        taken = await store.take("m", [*base, 2])
        assert taken is not None and taken.session_id == "new"
        assert await store.take("m", [*base, 2]) is None  # "old" is never taken
        await store.close()

    asyncio.run(main())


def test_a_record_that_diverges_from_the_prompt_keeps_the_common_prefix() -> None:
    # a reply sampled as one token and re-encoded as two in the next turn's template
    sampled = [*range(BUCKET_TOKENS), 1000, 7]  # ..., "\n\n", "1"
    follow_up = [*range(BUCKET_TOKENS), 999, 999, 7, 5, 6]  # ..., "\n", "\n", "1", ...
    assert reusable(kept("s", sampled), follow_up) == BUCKET_TOKENS
    assert reusable(kept("s", sampled), [*sampled, 3]) == len(sampled)  # a true prefix
    assert reusable(kept("s", sampled), [1, 2, 3]) == 0


def test_chats_after_a_shared_system_prompt_meet(store: SessionStore) -> None:
    """Two questions after the same 24-token system prompt: the second reuses the first's
    caches for the shared part (the bucket is keyed by fewer tokens than the system prompt)."""
    system = list(range(100, 124))
    assert len(system) > BUCKET_TOKENS

    async def main() -> None:
        await store.put(kept("france", [*system, 1, 2, 3, 4]))
        match = await store.take("m", [*system, 5, 6, 7])
        assert match is not None and match.session_id == "france"
        assert reusable(match, [*system, 5, 6, 7]) == len(system)
        await store.close()

    asyncio.run(main())


def test_a_bucket_keeps_its_latest_records(store: SessionStore) -> None:
    base = list(range(BUCKET_TOKENS))

    async def main() -> None:
        for i in range(MAX_BUCKET_RECORDS + 3):
            # later records expire later; record i holds base + [i]
            await store.put(kept(f"s{i}", [*base, i], ttl=60.0 + i))
        taken = []
        while (record := await store.take("m", [*base, 10_000])) is not None:
            taken.append(record.session_id)
        assert len(taken) == MAX_BUCKET_RECORDS
        assert {"s0", "s1", "s2"}.isdisjoint(taken)  # the three closest to expiry were dropped
        await store.close()

    asyncio.run(main())
