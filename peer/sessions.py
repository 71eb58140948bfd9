"""The sessions a peer holds: one KV cache per session, bounded by the cache budget.

A session lives while a stream is attached to it; after its stream ends it is kept for
`keep_alive` seconds when the client asked for it (so a later request can reuse its cache),
otherwise it is freed at once. Idle sessions expire.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from peer.memory import BudgetExceededError, CacheBudget
from swarm.blocks import Cache, Span


@dataclass
class Session:
    session_id: str
    cache: Cache
    max_length: int
    batch: int
    last_used: float = field(default_factory=time.monotonic)
    attached: bool = True
    keep_until: float = 0.0
    tokens_processed: int = 0
    steps: int = 0
    # its client sends the steps of all its sessions in rounds (`/swarmgate/sessions/1`):
    # they arrive together, so the scheduler never waits for this session's next step
    in_rounds: bool = False

    def touch(self) -> None:
        self.last_used = time.monotonic()


class SessionTable:
    def __init__(self, span: Span, budget: CacheBudget, idle_timeout: float = 300.0) -> None:
        self.span = span
        self.budget = budget
        self.idle_timeout = idle_timeout
        self.sessions: dict[str, Session] = {}
        self.evicted = 0  # kept sessions dropped to make room for new ones

    def __len__(self) -> int:
        return len(self.sessions)

    def open(self, session_id: str, max_length: int, batch: int) -> Session:
        """A new session with `batch * max_length` reserved tokens (BudgetExceededError if full)."""
        if session_id in self.sessions:
            raise ValueError(f"session {session_id!r} is already open")
        tokens = batch * self._rounded(max_length)
        self._make_room(tokens)
        self.budget.reserve(session_id, tokens)
        session = Session(session_id, self.span.new_cache(), max_length, batch)
        self.sessions[session_id] = session
        return session

    def in_use(self, session_id: str) -> bool:
        """Is the session open with a stream attached?"""
        session = self.sessions.get(session_id)
        return session is not None and session.attached

    def decoding(self) -> int:
        """Attached sessions past their prefill whose steps arrive one by one (the scheduler
        may wait a little for them to batch their steps)."""
        return sum(
            1
            for s in self.sessions.values()
            if s.attached and not s.in_rounds and s.cache.length > 0
        )

    def _rounded(self, length: int) -> int:
        """Tokens a row of `length` positions occupies: caches are allocated in whole pages."""
        page = int(getattr(self.span, "page_size", 1))
        return -(-length // page) * page

    def attach(self, session_id: str, max_length: int | None = None) -> Session | None:
        """Re-attach a kept session (its cache intact), or None if it is gone or in use.

        A larger `max_length` grows the session's reservation (BudgetExceededError if full).
        """
        session = self.sessions.get(session_id)
        if session is None or session.attached:
            return None
        if max_length is not None and max_length > session.max_length:
            session.attached = True  # not evictable while we make room for it
            try:
                grown = session.batch * self._rounded(max_length)
                self._make_room(grown - self.budget.reservations[session_id])
            finally:
                session.attached = False
            held = self.budget.release(session_id)
            try:
                self.budget.reserve(session_id, grown)
            except BudgetExceededError:
                self.budget.reserve(session_id, held)
                raise
            session.max_length = max_length
        session.attached = True
        session.keep_until = 0.0
        session.touch()
        return session

    def detach(self, session_id: str, keep_alive: float) -> None:
        """The session's stream ended: keep it for `keep_alive` seconds, or free it now."""
        session = self.sessions.get(session_id)
        if session is None:
            return
        if keep_alive > 0 and session.cache.length > 0:
            session.attached = False
            session.keep_until = time.monotonic() + keep_alive
            # a kept cache holds only what it has: give the rest of the reservation back
            self.budget.release(session_id)
            self.budget.reserve(session_id, session.batch * self._rounded(session.cache.length))
            session.max_length = session.cache.length
            session.cache.shrink()
        else:
            self.close(session_id)

    def _make_room(self, tokens: int) -> None:
        """Evict kept (detached) sessions, least recently used first, until `tokens` fit."""
        kept = sorted(
            (s for s in self.sessions.values() if not s.attached), key=lambda s: s.last_used
        )
        for session in kept:
            if self.budget.free_tokens >= tokens:
                return
            self.close(session.session_id)
            self.evicted += 1

    def close(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is not None:
            self.budget.release(session_id)
            session.cache.release()

    def expire(self, now: float | None = None) -> list[str]:
        """Free detached sessions past their keep-alive and attached ones idle too long."""
        now = time.monotonic() if now is None else now
        gone = [
            sid
            for sid, s in self.sessions.items()
            if (not s.attached and now >= s.keep_until)
            or (s.attached and now - s.last_used > self.idle_timeout)
        ]
        for sid in gone:
            self.close(sid)
        return gone
