"""P2PNode within one process (two trio threads, one per node), on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import torch

from swarm.p2p import (
    DialError,
    FrameStream,
    P2PError,
    P2PNode,
    RequestTimeoutError,
    StreamClosedError,
    StreamResetError,
)
from swarm.wire import TOO_LARGE, WireError, WireLimits


def new_threads(before: set[threading.Thread]) -> set[threading.Thread]:
    """Threads started since `before` that are still alive (other tests' threads don't count)."""
    return {t for t in threading.enumerate() if t not in before and t.is_alive()}


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


@asynccontextmanager
async def swarm(n: int = 2, **kwargs: Any) -> AsyncIterator[list[P2PNode]]:
    """n nodes; the first is the bootstrap of the others."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(P2PNode(**kwargs))
        nodes = [first]
        for _ in range(n - 1):
            nodes.append(await stack.enter_async_context(P2PNode(bootstrap=first.listen_maddrs)))
        yield nodes


async def eventually(check: Callable[[], bool], what: str, tries: int = 1000) -> None:
    """Wait for a condition (a bounded poll: a hang fails the test instead of blocking it)."""
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def no_streams_left(node: P2PNode, protocol: str) -> None:
    for _ in range(500):
        if protocol not in await node.open_streams():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{protocol} streams left open")


async def echo(stream: FrameStream) -> None:
    async for frame in stream:
        await stream.send({"type": "echo", **frame.header}, frame.tensors)


def test_listen_addresses_are_full_loopback_multiaddrs() -> None:
    async def main() -> None:
        async with swarm(1) as (a,):
            assert a.listen_maddrs
            for m in a.listen_maddrs:
                assert m.startswith("/ip4/127.0.0.1/tcp/") and m.endswith(f"/p2p/{a.peer_id}")

    run(main())


def test_request_carries_header_and_tensors_both_ways() -> None:
    async def main() -> None:
        async with swarm(2) as (a, b):
            await a.serve("/t/echo", echo)
            hidden = torch.randn(1, 5, 64).to(torch.bfloat16)
            big = torch.randn(1 << 18)  # 1 MiB
            reply = await b.request(a.peer_id, "/t/echo", {"seq": 3}, [hidden, big])
            assert reply.header == {"type": "echo", "seq": 3}
            assert torch.equal(reply.tensors[0], hidden) and torch.equal(reply.tensors[1], big)
            # nothing left open on either side after a one-shot request
            assert "/t/echo" not in await b.open_streams()
            await no_streams_left(a, "/t/echo")

    run(main())


def test_long_lived_stream_keeps_order_and_the_handler_sees_the_close() -> None:
    async def main() -> None:
        seen: list[int] = []
        ended = asyncio.Event()

        async def collect(stream: FrameStream) -> None:
            async for frame in stream:
                seen.append(frame.header["i"])
                await stream.send({"ack": frame.header["i"]})
            ended.set()

        async with swarm(2) as (a, b):
            await a.serve("/t/collect", collect)
            stream = await b.open_stream(a.peer_id, "/t/collect")
            assert stream.remote_peer_id == a.peer_id
            for i in range(50):
                await stream.send({"i": i})
                assert (await stream.recv()).header == {"ack": i}
            await stream.close()
            await asyncio.wait_for(ended.wait(), 10)
            assert seen == list(range(50))

    run(main())


def test_handler_errors_become_error_frames() -> None:
    async def main() -> None:
        async def busy(stream: FrameStream) -> None:
            await stream.recv()
            raise WireError("busy", "no cache left")

        async def broken(stream: FrameStream) -> None:
            await stream.recv()
            raise RuntimeError("secret internals")

        async with swarm(2) as (a, b):
            await a.serve("/t/busy", busy)
            await a.serve("/t/broken", broken)
            with pytest.raises(WireError) as err:
                await b.request(a.peer_id, "/t/busy", {})
            assert (err.value.code, err.value.message) == ("busy", "no cache left")
            with pytest.raises(WireError) as err2:
                await b.request(a.peer_id, "/t/broken", {})
            assert err2.value.code == "internal" and "secret" not in err2.value.message

    run(main())


def slow_handler(events: list[str]) -> Callable[[FrameStream], Awaitable[None]]:
    async def slow(stream: FrameStream) -> None:
        await stream.recv()
        events.append("started")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    return slow


def test_cancelled_request_cancels_the_remote_handler() -> None:
    async def main() -> None:
        events: list[str] = []
        async with swarm(2) as (a, b):
            await a.serve("/t/slow", slow_handler(events))
            task = asyncio.create_task(b.request(a.peer_id, "/t/slow", {}))
            await eventually(lambda: "started" in events, "handler started")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await eventually(lambda: "cancelled" in events, "remote handler cancelled")
            await no_streams_left(a, "/t/slow")
            await no_streams_left(b, "/t/slow")

    run(main())


def test_request_timeout_resets_and_cancels_the_handler() -> None:
    async def main() -> None:
        events: list[str] = []
        async with swarm(2) as (a, b):
            await a.serve("/t/slow", slow_handler(events))
            with pytest.raises(RequestTimeoutError):
                await b.request(a.peer_id, "/t/slow", {}, timeout=0.3)
            await eventually(lambda: "cancelled" in events, "remote handler cancelled")

    run(main())


def test_a_reset_by_the_server_reaches_the_client() -> None:
    async def main() -> None:
        async def rude(stream: FrameStream) -> None:
            await stream.recv()
            await stream.reset()

        async with swarm(2) as (a, b):
            await a.serve("/t/rude", rude)
            stream = await b.open_stream(a.peer_id, "/t/rude")
            await stream.send({})
            with pytest.raises(StreamResetError):
                await stream.recv()
            with pytest.raises(StreamResetError):  # and it stays that way
                await stream.recv()

    run(main())


def test_a_clean_close_by_the_server_is_not_a_reset() -> None:
    async def main() -> None:
        async def once(stream: FrameStream) -> None:
            await stream.send({"hello": 1})

        async with swarm(2) as (a, b):
            await a.serve("/t/once", once)
            stream = await b.open_stream(a.peer_id, "/t/once")
            assert (await stream.recv()).header == {"hello": 1}
            with pytest.raises(StreamClosedError):
                await stream.recv()
            await stream.close()

    run(main())


def test_oversized_frame_is_refused_with_too_large() -> None:
    async def main() -> None:
        async with AsyncExitStack() as stack:
            small = WireLimits(max_frame_bytes=64 * 1024)
            a = await stack.enter_async_context(P2PNode(limits=small))
            b = await stack.enter_async_context(P2PNode(bootstrap=a.listen_maddrs))
            await a.serve("/t/echo", echo)
            with pytest.raises(WireError) as err:
                await b.request(a.peer_id, "/t/echo", {}, [torch.zeros(1 << 16)], timeout=10)
            assert err.value.code == TOO_LARGE
            # the connection survives: a small request still works
            assert (await b.request(a.peer_id, "/t/echo", {"x": 1})).header["x"] == 1

    run(main())


def test_dialing_an_unknown_peer_fails_cleanly() -> None:
    async def main() -> None:
        async with swarm(1) as (a,):
            stranger = P2PNode().peer_id  # never started: nobody knows its address
            with pytest.raises(DialError):
                await a.open_stream(stranger, "/t/echo")
            with pytest.raises(DialError):
                await a.open_stream(stranger, "/t/echo", addrs=["/ip4/127.0.0.1/tcp/1"])

    run(main())


def test_ping_measures_a_round_trip() -> None:
    async def main() -> None:
        async with swarm(2) as (a, b):
            rtts = [await b.ping(a.peer_id) for _ in range(5)]
            assert all(isinstance(r, float) and r > 0 for r in rtts)
            assert await b.open_streams() == {"/swarmgate/ping/1": 1}  # one kept-open stream

    run(main())


def test_identity_persists_and_remembered_peers_replace_a_dead_bootstrap(tmp_path: Path) -> None:
    async def main() -> None:
        key = tmp_path / "node.key"
        async with swarm(1) as (a,):
            b = P2PNode(identity_path=key, bootstrap=a.listen_maddrs)
            await b.start()
            first_id = b.peer_id
            await b.stop()
            assert (tmp_path / "node.key.peers.json").exists()
            assert oct(key.stat().st_mode & 0o777) == "0o600"
            gone = P2PNode().peer_id
            again = P2PNode(identity_path=key, bootstrap=[f"/ip4/127.0.0.1/tcp/1/p2p/{gone}"])
            assert again.peer_id == first_id
            async with again:
                assert a.peer_id in await again.connected_peers()

    run(main())


def fds() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with suppress(OSError):
            out.add(f"{fd}:{os.readlink(f'/proc/self/fd/{fd}')}")
    return out


def test_stop_leaves_no_threads_or_sockets() -> None:
    threads_before = set(threading.enumerate())

    async def main() -> None:
        before = fds()
        async with swarm(3) as (a, b, c):
            await a.serve("/t/echo", echo)
            await b.request(a.peer_id, "/t/echo", {})
            await c.ping(b.peer_id)
            assert len(new_threads(threads_before)) == 3  # one trio thread per node
        assert fds() <= before

    run(main())
    assert new_threads(threads_before) == set()


def test_a_port_already_taken_fails_start_cleanly() -> None:
    threads_before = set(threading.enumerate())

    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            node = P2PNode(listen=[f"/ip4/127.0.0.1/tcp/{port}"])
            with pytest.raises(P2PError, match="could not listen"):
                await node.start()
            assert not node.running

    run(main())
    assert new_threads(threads_before) == set()
