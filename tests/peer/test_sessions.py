"""The session table: reservations, keep-alive, eviction of kept caches when room is needed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from peer.memory import BudgetExceededError, CacheBudget
from peer.sessions import SessionTable
from swarm.blocks import Span


class FakeCache:
    def __init__(self) -> None:
        self.length = 0
        self.released = False

    def shrink(self) -> None:
        pass

    def release(self) -> None:
        self.released = True


def table(total: int) -> SessionTable:
    span = cast(Span, SimpleNamespace(new_cache=FakeCache))
    return SessionTable(span, CacheBudget(total))


def fill(t: SessionTable, sid: str, length: int) -> None:
    cast(Any, t.sessions[sid].cache).length = length


def test_kept_sessions_shrink_to_their_length_and_are_evicted_for_new_ones() -> None:
    t = table(1000)
    t.open("a", max_length=600, batch=1)
    fill(t, "a", 100)
    t.detach("a", keep_alive=60)
    assert t.budget.reservations["a"] == 100  # kept: only what its cache holds
    t.open("b", max_length=800, batch=1)  # fits beside the kept one
    assert "a" in t.sessions
    t.open("c", max_length=150, batch=1)  # does not: the kept session goes
    assert "a" not in t.sessions and t.evicted == 1
    with pytest.raises(BudgetExceededError):  # attached sessions are never evicted
        t.open("d", max_length=500, batch=1)


def test_resume_grows_the_reservation_again() -> None:
    t = table(1000)
    t.open("a", max_length=300, batch=1)
    fill(t, "a", 50)
    t.detach("a", keep_alive=60)
    resumed = t.attach("a", max_length=400)
    assert resumed is not None and t.budget.reservations["a"] == 400
    assert t.attach("a") is None  # already attached


def test_detach_without_keep_alive_frees_at_once() -> None:
    t = table(1000)
    t.open("a", max_length=300, batch=1)
    fill(t, "a", 10)
    t.detach("a", keep_alive=0)
    assert not t.sessions and t.budget.used_tokens == 0
