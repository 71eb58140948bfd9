"""Every process runs on uvloop when it is installed, on asyncio's loop when asked."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from swarm import event_loop


async def loop_type() -> type:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


def test_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWARMGATE_LOOP", raising=False)
    assert event_loop.run(loop_type()) is uvloop.Loop


def test_asyncio_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMGATE_LOOP", "asyncio")
    ran = event_loop.run(loop_type())
    assert ran is not uvloop.Loop and issubclass(ran, asyncio.BaseEventLoop)


def test_a_thread_pool_and_cross_thread_wakeups_work_on_uvloop() -> None:
    """What the processes do on it: executor calls and callbacks from other threads."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        doubled = await loop.run_in_executor(None, lambda: 21 * 2)
        woke = loop.create_future()
        loop.run_in_executor(None, lambda: loop.call_soon_threadsafe(woke.set_result, 1))
        return doubled + await woke

    assert event_loop.run(main()) == 43
