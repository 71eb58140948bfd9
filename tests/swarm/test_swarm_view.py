"""Announcer and SwarmView over real nodes in one process (the multi-process version is in
test_swarm_processes.py)."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack

from swarm.announce import Announcer
from swarm.p2p import P2PNode
from swarm.records import ModelRecord, PeerRecord, block_key, model_key, register_validators
from swarm.swarm_cli import render
from swarm.swarm_view import SwarmView
from swarm.wire import NOT_FOUND, WireError

MODEL = "cd" * 32


def template(peer: P2PNode, start: int, end: int) -> PeerRecord:
    return PeerRecord(peer.peer_id, (), MODEL, start, end, throughput_decode=5.0)


def test_view_shows_spans_coverage_and_drops_offline_peers() -> None:
    async def main() -> None:
        async with AsyncExitStack() as stack:
            nodes = []
            for i in range(3):
                node = P2PNode(bootstrap=nodes[0].listen_maddrs if i else ())
                register_validators(node)
                nodes.append(await stack.enter_async_context(node))
            boot, b, c = nodes
            model = ModelRecord("tiny", MODEL, "llama", 6, 32, ts=1.0)
            ann_b = Announcer(b, lambda: template(b, 0, 4), model)
            ann_c = Announcer(c, lambda: template(c, 3, 6))
            await ann_b.start()
            await ann_c.start()
            assert {p for p, _ in await boot.find_providers(block_key(MODEL, 3))} == {
                b.peer_id,
                c.peer_id,
            }

            view = SwarmView(boot)
            snap = await view.refresh()
            m = snap.models[MODEL]
            assert m.record is not None and m.record.name == "tiny"
            assert m.coverage() == [1, 1, 1, 2, 1, 1] and m.complete
            assert {p.peer_id for p in m.servers_of(3)} == {b.peer_id, c.peer_id}
            assert all(p.rtt is not None and p.rtt > 0 for p in m.peers)
            data = json.loads(json.dumps(snap.to_json()))  # JSON-able
            spans = {p["peer_id"]: (p["start"], p["end"]) for p in data["models"][0]["peers"]}
            assert spans == {b.peer_id: (0, 4), c.peer_id: (3, 6)}
            assert all(isinstance(v, int) for span in spans.values() for v in span)
            assert "complete" in render(snap) and "tiny" in render(snap)

            await ann_c.stop()  # publishes state=offline
            m = (await view.refresh([MODEL])).models[MODEL]
            assert [p.peer_id for p in m.peers] == [b.peer_id]
            assert m.coverage() == [1, 1, 1, 1, 0, 0] and not m.complete
            await ann_b.stop()

    asyncio.run(main())


def test_a_peer_that_died_is_listed_unreachable_and_covers_nothing() -> None:
    async def main() -> None:
        async with AsyncExitStack() as stack:
            a = P2PNode()
            register_validators(a)
            await stack.enter_async_context(a)
            b = P2PNode(bootstrap=a.listen_maddrs)
            register_validators(b)
            await b.start()
            ann = Announcer(b, lambda: template(b, 0, 2))
            await ann.start()
            await ann.stop(offline=False)
            await b.stop()  # dies without saying so: its record is still valid for a while
            m = (await SwarmView(a, ping_timeout=1.0).refresh([MODEL])).models[MODEL]
            assert [(p.peer_id, p.reachable, p.rtt) for p in m.peers] == [(b.peer_id, False, None)]
            assert m.coverage() == [0, 0]

    asyncio.run(main())


class _CountingNode:
    """A node that knows a 3-block model and nobody serving it; counts provider lookups."""

    peer_id = "gateway"

    def __init__(self) -> None:
        self.lookups = 0

    async def known_peers(self) -> list[tuple[str, list[str]]]:
        return []

    async def get(self, key: str) -> bytes:
        if key == model_key(MODEL):
            return ModelRecord("tiny", MODEL, "llama", 3, 32, ts=99.0).to_bytes()
        raise WireError(NOT_FOUND, key)

    async def find_providers(self, key: str, count: int) -> list[tuple[str, list[str]]]:
        self.lookups += 1
        return []


def test_provider_lookups_are_reused_within_their_ttl_unless_fresh() -> None:
    now = [100.0]
    node = _CountingNode()
    view = SwarmView(node, ping=False, clock=lambda: now[0], providers_ttl=15.0)  # type: ignore[arg-type]

    async def refresh(fresh: bool = False) -> None:
        await view.refresh([MODEL], fresh=fresh)

    asyncio.run(refresh())
    first = node.lookups
    assert first > 0
    now[0] += 10
    asyncio.run(refresh())
    assert node.lookups == first  # within the TTL: no DHT walk
    asyncio.run(refresh(fresh=True))
    assert node.lookups == 2 * first  # asked for: walked again
    now[0] += 16
    asyncio.run(refresh())
    assert node.lookups == 3 * first  # expired: walked again
