"""PeerChannel's rounds against a fake peer stream: how many steps each round carries.

The real protocol runs in tests/peer/test_peer_e2e.py against peer processes; here the stream
is a stand-in that answers every round with its own rows, so the round sizes can be counted.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
import torch

from swarm.p2p import P2PNode
from swarm.rounds import MAX_TURNAROUND, TURNAROUND_DECAY, PeerChannel, Whereabouts
from swarm.wire import Frame


class EchoStream:
    """Answers each round with its rows (what a peer of an identity span would send)."""

    def __init__(self) -> None:
        self.rounds: list[int] = []  # steps per round sent
        self._replies: asyncio.Queue[Frame] = asyncio.Queue()
        self.has_unread = False

    async def send(self, header: dict[str, Any], tensors: list[torch.Tensor]) -> None:
        ops = header["ops"]
        self.rounds.append(sum(op["type"] == "step" for op in ops))
        await asyncio.sleep(0.01)  # the peer computes
        results = [{"type": "result", "session": op["session"]} for op in ops]
        self._replies.put_nowait(Frame({"type": "round", "results": results}, list(tensors)))

    async def recv(self) -> Frame:
        return await self._replies.get()

    def reset_nowait(self) -> None:
        pass


class FakeNode:
    def __init__(self, stream: EchoStream) -> None:
        self.stream = stream

    async def open_stream(self, *args: Any) -> EchoStream:
        return self.stream


@pytest.mark.parametrize(("groups", "expected"), [(1, [8]), (2, [4, 4]), (3, [3, 3, 2])])
def test_groups_split_the_decoding_sessions_into_that_many_rounds(
    groups: int, expected: list[int]
) -> None:
    async def main() -> None:
        stream = EchoStream()
        node = cast(P2PNode, FakeNode(stream))
        channel = PeerChannel(node, "peer", [], window=0.005, lanes=False, groups=groups)
        rows = [torch.full((1, 1, 4), float(i)) for i in range(8)]
        replies = await asyncio.gather(
            *(
                channel.call({"type": "step", "session": f"s{i}", "position": 0}, rows[i])
                for i in range(8)
            )
        )
        for i, (result, out) in enumerate(replies):
            assert result["session"] == f"s{i}"  # each session got its own row back
            assert out is not None and torch.equal(out, rows[i])
        assert stream.rounds == expected
        await channel.close()

    asyncio.run(main())


def test_turnaround_is_a_decaying_maximum_of_stays_in_the_client() -> None:
    """Rounds wait for sessions in the client as long as it takes them to come back."""
    spots = Whereabouts()
    first, second = cast(PeerChannel, object()), cast(PeerChannel, object())
    spots.waiting("a", first, 0.0)
    spots.sent("a", first, 0.001)
    spots.back("a", first, 0.010)
    spots.waiting("a", second, 0.010)  # relayed to the next hop at once
    assert spots.turnaround == 0.0
    spots.sent("a", second, 0.011)
    spots.back("a", second, 0.020)
    spots.waiting("a", first, 0.035)  # 15 ms in the client: its head pass
    assert spots.turnaround == pytest.approx(0.015)
    spots.sent("a", first, 0.036)
    spots.back("a", first, 0.040)
    spots.waiting("a", second, 0.040)
    assert spots.turnaround == pytest.approx(0.015 * TURNAROUND_DECAY)
    spots.sent("a", second, 0.041)
    spots.back("a", second, 0.050)
    spots.waiting("a", first, 60.0)  # a consumer that stalled counts as MAX_TURNAROUND
    assert spots.turnaround == MAX_TURNAROUND
