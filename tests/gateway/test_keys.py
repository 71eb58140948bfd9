"""API keys in Redis: stored as digests, revocable, with per-minute limits shared via Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis

from gateway.keys import KEYS_SET, KeyAdmin, KeyGuard, digest

URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def admin() -> Iterator[KeyAdmin]:
    client = redis.Redis.from_url(URL)
    client.flushdb()
    yield KeyAdmin(URL)
    client.flushdb()


def test_keys_are_stored_only_as_digests(admin: KeyAdmin) -> None:
    key = admin.add("alice", rpm=5)
    raw = redis.Redis.from_url(URL)
    stored = {m.decode() for m in raw.smembers(KEYS_SET)}  # type: ignore[union-attr]
    assert stored == {digest(key)}
    dump = b"".join(raw.dump(k) or b"" for k in raw.keys("*"))  # type: ignore[union-attr]
    assert key.encode() not in dump
    (info,) = admin.list()
    assert (info.name, info.rpm, info.revoked) == ("alice", 5, False)
    with pytest.raises(ValueError):
        admin.add("alice")


def test_lookup_revoke_and_limits(admin: KeyAdmin) -> None:
    key = admin.add("bob", rpm=2, tpm=1000)

    async def main() -> None:
        guard = KeyGuard(redis_url=URL, cache_seconds=0)
        other = KeyGuard(redis_url=URL, cache_seconds=0)  # a second gateway replica
        try:
            assert await guard.required()
            assert await guard.lookup("sk-sg-nope") is None
            info = await guard.lookup(key)
            assert info is not None and info.name == "bob"
            assert (await guard.admit(info, 10)).allowed
            assert (await other.admit(info, 10)).allowed
            third = await guard.admit(info, 10)  # the limit is shared across replicas
            assert not third.allowed and 0 < third.retry_after <= 60 and "requests" in third.reason
            admin.revoke("bob")
            assert await guard.lookup(key) is None
        finally:
            await guard.close()
            await other.close()

    asyncio.run(main())


def test_token_limit(admin: KeyAdmin) -> None:
    key = admin.add("carol", tpm=100)

    async def main() -> None:
        guard = KeyGuard(redis_url=URL)
        try:
            info = await guard.lookup(key)
            assert info is not None
            assert (await guard.admit(info, 60)).allowed
            refused = await guard.admit(info, 60)
            assert not refused.allowed and "tokens" in refused.reason
        finally:
            await guard.close()

    asyncio.run(main())


def test_redis_down_falls_back_to_this_process() -> None:
    async def main() -> None:
        guard = KeyGuard(static_keys=["sk-static"], redis_url="redis://127.0.0.1:1/0")
        try:
            info = await guard.lookup("sk-static")
            assert info is not None
            limited = type(info)(info.name, info.digest, rpm=1)
            assert (await guard.admit(limited, 1)).allowed
            assert not (await guard.admit(limited, 1)).allowed
            assert guard.redis_errors >= 1
        finally:
            await guard.close()

    asyncio.run(main())


def test_keys_command(admin: KeyAdmin) -> None:
    run = [sys.executable, "-m", "swarm.cli", "keys", "--redis-url", URL]
    added = subprocess.run(
        [*run, "add", "dave", "--rpm", "3"], capture_output=True, text=True, check=True
    )
    key = added.stdout.strip()
    assert key.startswith("sk-sg-")
    listed = subprocess.run([*run, "list"], capture_output=True, text=True, check=True).stdout
    assert "dave" in listed and key not in listed and digest(key)[:12] in listed
    revoked = subprocess.run([*run, "revoke", "dave"], capture_output=True, text=True, check=True)
    assert "revoked 1" in revoked.stdout


def test_unreachable_redis_fails_closed() -> None:
    async def main() -> None:
        guard = KeyGuard(redis_url="redis://127.0.0.1:1/0")
        try:
            assert await guard.required()  # never heard from Redis: keys are required
            assert await guard.lookup("sk-sg-anything") is None
        finally:
            await guard.close()

    asyncio.run(main())


def test_unknown_tokens_are_not_cached(admin: KeyAdmin) -> None:
    async def main() -> None:
        guard = KeyGuard(redis_url=URL)
        try:
            for i in range(50):
                assert await guard.lookup(f"sk-sg-random-{i}") is None
            assert guard._cache == {}
        finally:
            await guard.close()

    asyncio.run(main())
