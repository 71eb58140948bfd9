"""API keys and their limits, shared by every gateway replica through Redis.

A key is shown once, when created; Redis keeps only its sha256 (`sg:key:<sha256>` → hash of
name, limits, created, revoked) and the set `sg:keys` of those digests. A presented key is
hashed and looked up; the digests are compared in constant time. Each key may carry a
requests-per-minute and a tokens-per-minute limit, counted in fixed one-minute windows in Redis
(`sg:rl:<digest>:<req|tok>:<minute>`), so the limits hold across replicas. When Redis is down
the gateway keeps serving: the keys it has seen stay valid from its cache and the counters fall
back to this process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

KEY_PREFIX = "sg:"
KEYS_SET = f"{KEY_PREFIX}keys"
WINDOW = 60  # seconds
MAX_CACHED_KEYS = 10_000


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "sk-sg-" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class KeyInfo:
    name: str
    digest: str
    rpm: int = 0  # 0: unlimited
    tpm: int = 0
    created: float = 0.0
    revoked: bool = False

    def to_redis(self) -> dict[str, str]:
        return {
            "name": self.name,
            "rpm": str(self.rpm),
            "tpm": str(self.tpm),
            "created": str(self.created),
            "revoked": "1" if self.revoked else "0",
        }

    @classmethod
    def from_redis(cls, key_digest: str, data: dict[Any, Any]) -> KeyInfo:
        text = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in data.items()
        }
        return cls(
            name=text.get("name", ""),
            digest=key_digest,
            rpm=int(text.get("rpm", 0)),
            tpm=int(text.get("tpm", 0)),
            created=float(text.get("created", 0.0)),
            revoked=text.get("revoked") == "1",
        )


class KeyAdmin:
    """Synchronous key management for the `swarmgate keys` command."""

    def __init__(self, redis_url: str) -> None:
        import redis

        self.redis = redis.Redis.from_url(redis_url)

    def add(self, name: str, rpm: int = 0, tpm: int = 0) -> str:
        if any(info.name == name and not info.revoked for info in self.list()):
            raise ValueError(f"a live key named {name!r} exists already")
        key = new_key()
        info = KeyInfo(name, digest(key), rpm, tpm, time.time())
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(f"{KEY_PREFIX}key:{info.digest}", mapping=dict(info.to_redis()))  # type: ignore[arg-type]
        pipe.sadd(KEYS_SET, info.digest)
        pipe.execute()
        return key

    def list(self) -> list[KeyInfo]:
        infos = []
        for raw in sorted(self.redis.smembers(KEYS_SET)):
            key_digest = raw.decode() if isinstance(raw, bytes) else str(raw)
            data = self.redis.hgetall(f"{KEY_PREFIX}key:{key_digest}")
            if data:
                infos.append(KeyInfo.from_redis(key_digest, data))
        return infos

    def revoke(self, name: str) -> int:
        revoked = 0
        for info in self.list():
            if info.name == name and not info.revoked:
                self.redis.hset(f"{KEY_PREFIX}key:{info.digest}", "revoked", "1")
                revoked += 1
        return revoked


@dataclass
class Decision:
    allowed: bool
    retry_after: float = 0.0
    reason: str = ""


@dataclass
class KeyGuard:
    """Per-request key checks and rate limits for the gateway (async, Redis or local)."""

    static_keys: list[str] = field(default_factory=list)
    redis_url: str | None = None
    cache_seconds: float = 5.0
    _redis: Any = None
    _cache: dict[str, tuple[float, KeyInfo | None]] = field(default_factory=dict)
    _any_keys: tuple[float, bool] = (0.0, False)
    _local_counts: dict[str, int] = field(default_factory=dict)
    redis_errors: int = 0

    def __post_init__(self) -> None:
        self._static = [digest(key) for key in self.static_keys if key]
        if self.redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(
                self.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
            )

    async def required(self) -> bool:
        """Keys are required when a static key is set or Redis holds any key."""
        if self._static:
            return True
        if self._redis is None:
            return False
        checked, any_keys = self._any_keys
        if time.monotonic() - checked < self.cache_seconds:
            return any_keys
        try:
            any_keys = bool(await self._redis.scard(KEYS_SET))
        except Exception:
            self.redis_errors += 1
            if checked == 0.0:
                any_keys = True  # never heard from Redis: fail closed, not open
        self._any_keys = (time.monotonic(), any_keys)
        return any_keys

    async def lookup(self, presented: str) -> KeyInfo | None:
        """The live key matching `presented`, or None. Constant-time digest comparison."""
        presented_digest = digest(presented)
        matched = False
        for known in self._static:
            matched |= hmac.compare_digest(presented_digest, known)
        if matched:
            return KeyInfo("static", presented_digest)
        if self._redis is None:
            return None
        cached = self._cache.get(presented_digest)
        if cached and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        try:
            data = await self._redis.hgetall(f"{KEY_PREFIX}key:{presented_digest}")
        except Exception:
            self.redis_errors += 1
            return cached[1] if cached else None
        info = KeyInfo.from_redis(presented_digest, data) if data else None
        if info is not None and (
            info.revoked or not hmac.compare_digest(info.digest, presented_digest)
        ):
            info = None
        if info is not None:  # only known keys are cached: random tokens cannot grow it
            if len(self._cache) >= MAX_CACHED_KEYS:
                self._cache.pop(next(iter(self._cache)))
            self._cache[presented_digest] = (time.monotonic(), info)
        else:
            self._cache.pop(presented_digest, None)
        return info

    async def admit(self, info: KeyInfo, tokens: int) -> Decision:
        """Count one request of `tokens` (prompt + max completion) against the key's limits."""
        if not info.rpm and not info.tpm:
            return Decision(True)
        minute = int(time.time() // WINDOW)
        retry = (minute + 1) * WINDOW - time.time()
        names = (
            f"{KEY_PREFIX}rl:{info.digest}:req:{minute}",
            f"{KEY_PREFIX}rl:{info.digest}:tok:{minute}",
        )
        counts = await self._count(names, (1, tokens))
        if info.rpm and counts[0] > info.rpm:
            return Decision(False, retry, f"requests per minute limit of {info.rpm} reached")
        if info.tpm and counts[1] > info.tpm:
            return Decision(False, retry, f"tokens per minute limit of {info.tpm} reached")
        return Decision(True)

    async def _count(self, names: tuple[str, str], amounts: tuple[int, int]) -> tuple[int, int]:
        if self._redis is not None:
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    for name, amount in zip(names, amounts, strict=True):
                        pipe.incrby(name, amount)
                        pipe.expire(name, 2 * WINDOW)
                    results = await pipe.execute()
                return int(results[0]), int(results[2])
            except Exception:
                self.redis_errors += 1
        current = int(time.time() // WINDOW)
        for stale in [k for k in self._local_counts if not k.endswith(f":{current}")]:
            del self._local_counts[stale]
        out = []
        for name, amount in zip(names, amounts, strict=True):
            self._local_counts[name] = self._local_counts.get(name, 0) + amount
            out.append(self._local_counts[name])
        return out[0], out[1]

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
