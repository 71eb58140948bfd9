"""Lanes (`swarm.lanes`): frames over TCP + Noise, tickets handed out over real libp2p hosts.

Two P2PNodes in this process (each with its own trio thread), on 127.0.0.1 only. A relay
between client and lane server records every byte on the wire, to check that nothing but the
ticket id travels in the clear and that a recorded handshake cannot be replayed.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from swarm import lanes
from swarm.lanes import (
    LANE_PROTOCOL,
    LENGTH,
    MAGIC,
    MAX_TICKETS_PER_REMOTE,
    LaneServer,
    LaneStream,
    _noise,
    lane_host,
    listen_host,
    open_lane,
)
from swarm.p2p import P2PNode, StreamClosedError, StreamResetError
from swarm.wire import TOO_LARGE, WireError, WireLimits, encode_frame_bytes

ECHO = "/test/echo/1"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@dataclass
class Relay:
    """A TCP relay in front of a lane server that keeps what each side sent."""

    target_port: int
    port: int = 0
    upstream: bytearray = field(default_factory=bytearray)  # client → server
    downstream: bytearray = field(default_factory=bytearray)
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def copy(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, log: bytearray
        ) -> None:
            try:
                while data := await src.read(1 << 16):
                    log += data
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(
            copy(reader, up_writer, self.upstream), copy(up_reader, writer, self.downstream)
        )


@dataclass
class Setup:
    client: P2PNode
    server_node: P2PNode
    lanes: LaneServer
    seen: list[LaneStream]

    async def open(self) -> LaneStream:
        return await open_lane(
            self.client, self.server_node.peer_id, ECHO, self.server_node.listen_maddrs
        )


@asynccontextmanager
async def echo_lanes(limits: WireLimits | None = None) -> AsyncIterator[Setup]:
    seen: list[LaneStream] = []

    async def echo(stream: LaneStream) -> None:
        seen.append(stream)
        async for frame in stream:
            await stream.send(frame.header, frame.tensors)

    async with AsyncExitStack() as stack:
        server_node = await stack.enter_async_context(P2PNode())
        client = await stack.enter_async_context(P2PNode(bootstrap=server_node.listen_maddrs))
        server = LaneServer({ECHO: echo}, limits=limits or WireLimits())
        await server.start()
        stack.push_async_callback(server.close)
        await server_node.serve(LANE_PROTOCOL, server.take_ticket)
        yield Setup(client, server_node, server, seen)


def test_a_lane_carries_frames_both_ways_and_knows_the_libp2p_identities() -> None:
    async def main() -> None:
        async with echo_lanes() as s:
            lane = await s.open()
            assert lane.remote_peer_id == s.server_node.peer_id
            for tensors in (
                [],
                [torch.arange(576, dtype=torch.float32)],
                [torch.randn(3, 70_000).to(torch.bfloat16), torch.arange(5)],  # many messages
            ):
                await lane.send({"type": "echo", "n": len(tensors)}, tensors)
                frame = await lane.recv()
                assert frame.header == {"type": "echo", "n": len(tensors)}
                assert len(frame.tensors) == len(tensors)
                for got, sent in zip(frame.tensors, tensors, strict=True):
                    assert got.dtype == sent.dtype and torch.equal(got, sent)
            assert [x.remote_peer_id for x in s.seen] == [s.client.peer_id]
            await lane.close()
            assert s.lanes.opened == 1

    run(main())


def test_nothing_but_the_ticket_id_travels_in_the_clear_and_a_replay_is_refused() -> None:
    marker = b"PLAINTEXT-MARKER-" * 64

    async def main() -> None:
        async with echo_lanes() as s:
            relay = Relay(s.lanes.port)
            await relay.start()
            s.lanes.port = relay.port  # tickets now point at the relay
            lane = await s.open()
            payload = torch.frombuffer(bytearray(marker), dtype=torch.uint8)
            await lane.send({"type": "echo", "secret": "header-marker-text"}, [payload])
            frame = await lane.recv()
            assert bytes(frame.tensors[0].numpy()) == marker
            await lane.close()
            wire = bytes(relay.upstream) + bytes(relay.downstream)
            assert marker[:32] not in wire and b"header-marker-text" not in wire
            assert relay.upstream.startswith(MAGIC)

            # the recorded hello and first handshake message, sent again: no answer, dropped
            refused = s.lanes.refused
            reader, writer = await asyncio.open_connection("127.0.0.1", s.lanes.port)
            at = len(MAGIC) + 16
            (size,) = LENGTH.unpack(relay.upstream[at : at + LENGTH.size])
            first = bytes(relay.upstream[: at + LENGTH.size + size])
            writer.write(first)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            assert s.lanes.refused == refused + 1
            lane = await s.open()  # the server serves on
            await lane.send({"type": "echo"})
            assert (await lane.recv()).header == {"type": "echo"}
            await lane.close()

    run(main())


async def _handshake_with(port: int, ticket: bytes, key: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    noise = _noise(True, key, ticket)
    first = bytes(noise.write_message())
    writer.write(MAGIC + ticket + LENGTH.pack(len(first)) + first)
    answer = await asyncio.wait_for(reader.read(1 << 16), 5)  # an answer, or b"" at the end
    writer.close()
    return answer


def test_a_wrong_key_an_unknown_ticket_or_an_expired_one_gets_no_lane(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        async with echo_lanes() as s:
            ticket, key = secrets.token_bytes(16), secrets.token_bytes(32)
            s.lanes.admit("someone", ECHO, ticket, key)
            assert await _handshake_with(s.lanes.port, ticket, secrets.token_bytes(32)) == b""
            # the ticket was used up by that attempt, right key or not
            assert await _handshake_with(s.lanes.port, ticket, key) == b""
            assert await _handshake_with(s.lanes.port, secrets.token_bytes(16), key) == b""
            monkeypatch.setattr(lanes, "TICKET_TTL", 0.05)
            late = secrets.token_bytes(16)
            s.lanes.admit("someone", ECHO, late, key)
            await asyncio.sleep(0.1)
            assert await _handshake_with(s.lanes.port, late, key) == b""
            assert s.lanes.refused == 4 and s.lanes.opened == 0
            fresh = secrets.token_bytes(16)
            s.lanes.admit("someone", ECHO, fresh, key)
            assert await _handshake_with(s.lanes.port, fresh, key) != b""  # the right way works

    run(main())


def test_garbage_and_silent_connections_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes, "HANDSHAKE_TIMEOUT", 0.3)

    async def main() -> None:
        async with echo_lanes() as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.lanes.port)
            writer.write(secrets.token_bytes(200))
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", s.lanes.port)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # silent: timed out
            writer.close()
            assert s.lanes.refused == 2
            lane = await s.open()
            await lane.send({"type": "echo"})
            assert (await lane.recv()).header == {"type": "echo"}
            await lane.close()

    run(main())


def test_an_oversized_frame_gets_an_error_frame_and_the_lane_ends() -> None:
    async def main() -> None:
        async with echo_lanes(WireLimits(max_frame_bytes=64 * 1024)) as s:
            lane = await s.open()
            await lane.send({"type": "echo"}, [torch.zeros(100_000)])
            frame = await lane.recv()
            assert frame.is_error and frame.header["code"] == TOO_LARGE
            with pytest.raises(StreamClosedError):
                await lane.recv()
            again = await s.open()
            await again.send({"type": "echo"}, [torch.ones(10)])
            assert torch.equal((await again.recv()).tensors[0], torch.ones(10))
            await again.close()

    run(main())


def test_tickets_are_bounded_and_checked() -> None:
    server = LaneServer({ECHO: lambda stream: asyncio.sleep(0)})
    for _ in range(MAX_TICKETS_PER_REMOTE):
        server.admit("a", ECHO, secrets.token_bytes(16), secrets.token_bytes(32))
    with pytest.raises(WireError, match="busy"):
        server.admit("a", ECHO, secrets.token_bytes(16), secrets.token_bytes(32))
    server.admit("b", ECHO, secrets.token_bytes(16), secrets.token_bytes(32))  # others may
    with pytest.raises(WireError, match="not_found"):
        server.admit("b", "/other/1", secrets.token_bytes(16), secrets.token_bytes(32))
    with pytest.raises(WireError, match="bad_request"):
        server.admit("b", ECHO, b"short", secrets.token_bytes(32))


def test_a_peer_without_lanes_raises_so_the_client_can_fall_back() -> None:
    async def main() -> None:
        async with P2PNode() as server_node, P2PNode() as client:
            with pytest.raises(WireError):
                await open_lane(client, server_node.peer_id, ECHO, server_node.listen_maddrs)

    run(main())


def test_where_lanes_listen_and_are_dialed() -> None:
    assert listen_host(["/ip4/127.0.0.1/tcp/0"]) == "127.0.0.1"
    assert listen_host(["/ip6/::1/tcp/4001"]) == "::1"
    assert listen_host([]) == "127.0.0.1"
    assert lane_host(["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW"]) == "127.0.0.1"
    with pytest.raises(WireError):  # never a host the peer names itself
        lane_host(["/dns4/example.org/tcp/4001"])


def test_a_message_that_fails_to_decrypt_resets_the_lane() -> None:
    ended: list[BaseException] = []

    async def record(stream: LaneStream) -> None:
        try:
            async for frame in stream:
                await stream.send(frame.header, frame.tensors)
        except WireError as e:
            ended.append(e)
            raise

    async def main() -> None:
        async with echo_lanes() as s:
            s.lanes.handlers[ECHO] = record
            lane = await s.open()
            lane._writer.write(LENGTH.pack(40) + secrets.token_bytes(40))  # forged message
            with pytest.raises((StreamResetError, StreamClosedError)):
                await asyncio.wait_for(lane.recv(), 5)
            await eventually(lambda: bool(ended))
            assert isinstance(ended[0], StreamResetError)  # not mistaken for a clean close

    run(main())


def test_a_frame_left_unfinished_ends_the_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes, "FRAME_TIMEOUT", 0.3)

    async def main() -> None:
        async with echo_lanes() as s:
            lane = await s.open()
            whole = encode_frame_bytes({"type": "echo"}, [torch.zeros(1000)])
            await lane.send_raw(whole[:100])  # a header promising 4000 bytes, then silence
            with pytest.raises((StreamResetError, StreamClosedError)):
                await asyncio.wait_for(lane.recv(), 5)

    run(main())


def test_open_lanes_count_against_a_remote_s_tickets() -> None:
    async def main() -> None:
        async with echo_lanes() as s:
            held = [await s.open() for _ in range(3)]
            for _ in range(MAX_TICKETS_PER_REMOTE - 3):
                s.lanes.admit(s.client.peer_id, ECHO, secrets.token_bytes(16), b"k" * 32)
            with pytest.raises(WireError, match="busy"):
                await s.open()
            for lane in held:
                await lane.close()

    run(main())


async def eventually(check: Any, tries: int = 200) -> None:
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("never happened")
