"""The asyncio <-> trio bridge: results, errors and cancellation cross the thread boundary."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from swarm.p2p.bridge import TrioThread
from swarm.p2p.errors import NodeStoppedError, P2PError
from swarm.wire import WireError


@asynccontextmanager
async def nothing() -> AsyncIterator[None]:
    yield


def new_threads(before: set[threading.Thread]) -> set[threading.Thread]:
    """Threads started since `before` that are still alive (other tests' threads don't count)."""
    return {t for t in threading.enumerate() if t not in before and t.is_alive()}


def test_results_and_errors_cross_the_thread_boundary() -> None:
    threads_before = set(threading.enumerate())

    async def main() -> None:
        bridge = TrioThread("test-bridge")
        await bridge.start(nothing)
        caller = threading.current_thread()

        async def where() -> bool:
            await trio.sleep(0)
            return threading.current_thread() is not caller

        async def fails() -> None:
            raise KeyError("boom")

        async def wire_fails() -> None:
            raise WireError("busy", "full")

        assert await bridge.call(where) is True
        with pytest.raises(P2PError) as err:
            await bridge.call(fails)
        assert "KeyError" in err.value.message  # a plain-text error, not the trio-side object
        with pytest.raises(WireError) as werr:
            await bridge.call(wire_fails)
        assert werr.value.code == "busy"
        await bridge.stop()
        with pytest.raises(NodeStoppedError):
            await bridge.call(where)

    asyncio.run(main())
    assert new_threads(threads_before) == set()


def test_cancelling_the_asyncio_awaiter_cancels_the_trio_task() -> None:
    async def main() -> None:
        bridge = TrioThread("test-bridge")
        await bridge.start(nothing)
        started, cancelled = threading.Event(), threading.Event()

        async def forever() -> None:
            started.set()
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                cancelled.set()
                raise

        task = asyncio.create_task(bridge.call(forever))
        while not started.is_set():
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(400):
            if cancelled.is_set():
                break
            await asyncio.sleep(0.005)
        assert cancelled.is_set()
        await bridge.stop()

    asyncio.run(main())


def test_stop_cancels_pending_calls() -> None:
    threads_before = set(threading.enumerate())

    async def main() -> None:
        bridge = TrioThread("test-bridge")
        await bridge.start(nothing)
        task = asyncio.create_task(bridge.call(trio.sleep_forever))
        await asyncio.sleep(0.05)
        await bridge.stop()
        with pytest.raises(NodeStoppedError):
            await task

    asyncio.run(main())
    assert new_threads(threads_before) == set()
