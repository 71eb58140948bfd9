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
from swarm.rounds import CLIENT_PASS_DECAY, MAX_CLIENT_PASS, PeerChannel, Whereabouts
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


def test_client_pass_is_a_decaying_maximum_of_the_passes_reported() -> None:
    spots = Whereabouts()
    spots.passed(0.015)
    spots.passed(0.001)
    assert spots.client_pass == pytest.approx(0.015 * CLIENT_PASS_DECAY)
    spots.passed(60.0)  # a stall counts as MAX_CLIENT_PASS
    assert spots.client_pass == MAX_CLIENT_PASS


@pytest.mark.parametrize(("client_pass", "expected"), [(0.05, [2, 2]), (0.0, [2, 1, 1])])
def test_rounds_wait_for_a_session_in_the_client_as_long_as_its_passes_take(
    client_pass: float, expected: list[int]
) -> None:
    """A session back in the client for 30 ms (its head pass) joins the next round when the
    client's passes take that long; without such passes (a slow consumer, say) the round
    goes after the 5 ms window."""

    async def main() -> None:
        stream = EchoStream()
        channel = PeerChannel(cast(P2PNode, FakeNode(stream)), "peer", [], window=0.005)
        channel.lanes = False
        if client_pass:
            channel.whereabouts.passed(client_pass)
        row = torch.zeros(1, 1, 4)

        async def session(sid: str, pause: float) -> None:
            await channel.call({"type": "step", "session": sid, "position": 0}, row)
            await asyncio.sleep(pause)  # in the client
            await channel.call({"type": "step", "session": sid, "position": 1}, row)

        await asyncio.gather(session("fast", 0.0), session("slow", 0.03))
        assert stream.rounds == expected
        await channel.close()

    asyncio.run(main())


class SlowPeerStream(EchoStream):
    """Answers each round 20 ms after it was sent, without holding up the next send."""

    def __init__(self) -> None:
        super().__init__()
        self.outstanding = 0
        self.most_outstanding = 0

    async def send(self, header: dict[str, Any], tensors: list[torch.Tensor]) -> None:
        ops = header["ops"]
        self.rounds.append(sum(op["type"] == "step" for op in ops))
        self.outstanding += 1
        self.most_outstanding = max(self.most_outstanding, self.outstanding)
        results = [{"type": "result", "session": op["session"]} for op in ops]
        reply = Frame({"type": "round", "results": results}, list(tensors))

        async def later() -> None:
            await asyncio.sleep(0.02)
            self.outstanding -= 1
            self._replies.put_nowait(reply)

        asyncio.get_running_loop().create_task(later())


@pytest.mark.parametrize(("depth", "in_flight"), [(1, 1), (2, 2)])
def test_with_depth_two_the_second_group_goes_out_before_the_first_is_answered(
    depth: int, in_flight: int
) -> None:
    async def main() -> None:
        stream = SlowPeerStream()
        node = cast(P2PNode, FakeNode(stream))
        channel = PeerChannel(node, "peer", [], window=0.005, lanes=False, groups=2, depth=depth)
        rows = [torch.full((1, 1, 4), float(i)) for i in range(8)]
        replies = await asyncio.gather(
            *(
                channel.call({"type": "step", "session": f"s{i}", "position": 0}, rows[i])
                for i in range(8)
            )
        )
        for i, (result, out) in enumerate(replies):  # answers matched to their rounds, in order
            assert result["session"] == f"s{i}"
            assert out is not None and torch.equal(out, rows[i])
        assert stream.rounds == [4, 4]
        assert stream.most_outstanding == in_flight
        await channel.close()

    asyncio.run(main())
