"""Route selection: cheapest chain, bans with backoff, no mixing of quantizations by default."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from gateway.engine import Engine, ServedModel
from gateway.routing import Bans, find_route
from swarm.records import PeerRecord
from swarm.swarm_view import PeerView


def peer(
    name: str,
    start: int,
    end: int,
    tput: float = 10.0,
    quant: str = "none",
    rtt: float = 0.001,
    free: int = 10_000,
) -> PeerView:
    record = PeerRecord(
        peer_id=name,
        addrs=(),
        model_hash="m",
        start=start,
        end=end,
        quant=quant,
        throughput_decode=tput,
        cache_tokens_free=free,
    )
    return PeerView(record, rtt=rtt)


def names(hops: Any) -> list[str]:
    return [h.peer_id for h in hops]


def test_cheapest_chain_wins() -> None:
    peers = [
        peer("a", 0, 10, tput=5),
        peer("b", 0, 10, tput=50),
        peer("c", 10, 20),
        peer("d", 0, 20, tput=2),
    ]
    assert names(find_route(peers, 0, 20)) == ["b", "c"]
    assert names(find_route(peers, 0, 20, exclude=frozenset({"b"}))) == ["a", "c"]
    assert find_route(peers, 0, 20, exclude=frozenset({"c", "d"})) is None
    assert names(find_route(peers, 10, 20)) == ["c"]


def test_peers_short_of_cache_are_a_last_resort() -> None:
    peers = [peer("a", 0, 10, free=100), peer("b", 0, 10, tput=1)]
    assert names(find_route(peers, 0, 10, cache_tokens=500)) == ["b"]
    assert names(find_route(peers[:1], 0, 10, cache_tokens=500)) == ["a"]


def test_bans_back_off_exponentially() -> None:
    bans = Bans(base=10.0)
    bans.ban("x")
    first = bans.until["x"]
    bans.ban("x")
    assert bans.banned("x") and bans.until["x"] - first >= 9.0
    bans.forgive("x")
    assert not bans.banned("x")


class View:
    def __init__(self, peers: list[PeerView]) -> None:
        self.snapshot = type("S", (), {"models": {"m": type("M", (), {"peers": peers})()}})()

    async def refresh(self, _hashes: Any = None) -> None:
        return None


def engine_over(peers: list[PeerView], mixed: bool = False) -> tuple[Engine, ServedModel]:
    engine = Engine(cast(Any, None), cast(Any, View(peers)), [], mixed_precision=mixed)
    model = cast(
        ServedModel, type("Model", (), {"model_hash": "m", "name": "m", "num_blocks": 20})()
    )
    return engine, model


def test_quantizations_are_not_mixed_unless_allowed() -> None:
    peers = [
        peer("fast-int8", 0, 10, tput=100, quant="int8"),
        peer("exact", 0, 10),
        peer("tail", 10, 20),
    ]
    engine, model = engine_over(peers)
    assert names(asyncio.run(engine.route(model, 0, 20))) == ["exact", "tail"]
    engine, model = engine_over(peers, mixed=True)
    assert names(asyncio.run(engine.route(model, 0, 20))) == ["fast-int8", "tail"]
    only_int8 = [
        peer("q1", 0, 10, quant="int8"),
        peer("q2", 10, 20, quant="int8"),
        peer("exact", 0, 10),
    ]
    engine, model = engine_over(only_int8)
    assert names(asyncio.run(engine.route(model, 0, 20))) == ["q1", "q2"]
    assert names(asyncio.run(engine.route(model, 0, 10, quant="none"))) == ["exact"]
