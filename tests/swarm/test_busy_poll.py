"""Busy polling (`swarm.busy_poll`): the loop spins for its window after a poke, then sleeps."""

from __future__ import annotations

import asyncio
import time

import pytest

from swarm import busy_poll, event_loop


def _loop_cpu_seconds(armed: bool, window: float, wait: float) -> float:
    """CPU time the loop's thread used while it awaited `wait` seconds (poked first if armed)."""

    async def main() -> float:
        poll = busy_poll.enable(window)
        try:
            if armed:
                busy_poll.poke()
            began = time.thread_time()
            await asyncio.sleep(wait)
            return time.thread_time() - began
        finally:
            busy_poll.disable(poll)

    return event_loop.run(main())


def test_a_poked_loop_spins_instead_of_sleeping() -> None:
    # a sleeping loop uses next to no CPU while it waits; a spinning one uses the thread's
    # core for the whole wait (less whatever the machine's other work takes of it)
    idle = _loop_cpu_seconds(armed=False, window=1.0, wait=0.2)
    spinning = _loop_cpu_seconds(armed=True, window=1.0, wait=0.2)
    assert idle < 0.02
    assert spinning > 0.03


def test_spinning_stops_after_the_window_and_counts_its_time() -> None:
    async def main() -> tuple[bool, bool, float, float]:
        poll = busy_poll.enable(window=0.03)
        try:
            poll.poke()
            during = poll.spinning
            await asyncio.sleep(0.01)
            poll.poke()  # re-arms: the spell lasts 30 ms from here
            await asyncio.sleep(0.15)
            cpu = time.thread_time()
            await asyncio.sleep(0.1)
            return during, poll.spinning, poll.seconds, time.thread_time() - cpu
        finally:
            busy_poll.disable()

    during, after, armed, idle_cpu = event_loop.run(main())
    assert during and not after
    assert 0.035 <= armed < 0.14  # one spell: 10 ms, then 30 ms from the second poke
    assert idle_cpu < 0.02  # asleep again


def test_poke_without_enable_does_nothing() -> None:
    async def main() -> float:
        busy_poll.poke()
        began = time.thread_time()
        await asyncio.sleep(0.1)
        return time.thread_time() - began

    assert event_loop.run(main()) < 0.02
    assert busy_poll.seconds() == 0.0


def test_no_spinning_while_paused_and_the_rest_of_the_window_after() -> None:
    """Work handed to another thread runs `paused()`: the loop sleeps meanwhile (that thread
    needs the GIL) and spins again for what is left of the window once it is back."""

    async def main() -> tuple[float, bool, bool, float]:
        poll = busy_poll.enable(window=1.0)
        try:
            busy_poll.poke()
            with busy_poll.paused():
                await asyncio.sleep(0)  # the spinning callback sees the hold and stops
                began = time.thread_time()
                await asyncio.sleep(0.2)
                held_cpu = time.thread_time() - began
                held = poll.spinning
            after = poll.spinning
            began = time.thread_time()
            await asyncio.sleep(0.2)
            return held_cpu, held, after, time.thread_time() - began
        finally:
            busy_poll.disable(poll)

    held_cpu, held, after, spinning_cpu = event_loop.run(main())
    assert not held and held_cpu < 0.02
    assert after and spinning_cpu > 0.03


def test_inline_work_while_paused_is_not_counted_as_polling() -> None:
    """A peer computing inline blocks its loop inside `paused()`: that time is compute, not
    polling, even though the spinning callback only sees the hold once the loop turns."""

    async def main() -> tuple[float, bool]:
        poll = busy_poll.enable(window=1.0)
        try:
            busy_poll.poke()
            await asyncio.sleep(0.02)
            with busy_poll.paused():
                time.sleep(0.3)  # the inline compute
                await asyncio.sleep(0)
            counted = poll.seconds
            return counted, poll.spinning
        finally:
            busy_poll.disable(poll)

    counted, spinning = event_loop.run(main())
    assert 0.015 <= counted < 0.2
    assert spinning  # the rest of the window after the work


def test_a_release_before_the_callback_turns_counts_the_rest() -> None:
    """Held and released with no turn of the loop between (the callback still queued): the
    hold's time is not counted, the rest of the window is, and one callback spins on."""

    async def main() -> tuple[float, float, bool, int]:
        poll = busy_poll.enable(window=1.0)
        ticks = 0
        tick = poll._tick

        def counted_tick() -> None:
            nonlocal ticks
            ticks += 1
            tick()

        poll._tick = counted_tick  # type: ignore[method-assign]
        try:
            busy_poll.poke()
            poll.hold()
            time.sleep(0.3)  # inline work, the loop blocked
            poll.release()
            right_after = poll.seconds
            await asyncio.sleep(0.05)
            turns, ticks = ticks, 0
            await asyncio.sleep(0)
            return right_after, poll.seconds, poll.spinning, ticks if turns else -1
        finally:
            busy_poll.disable(poll)

    right_after, later, spinning, per_turn = event_loop.run(main())
    assert right_after < 0.01  # the held 0.3 s not counted
    assert 0.04 <= later < 0.2 and spinning
    assert per_turn == 1  # one callback per turn of the loop, not two


def test_disable_leaves_another_enabled_poll_alone() -> None:
    async def main() -> tuple[bool, float]:
        first = busy_poll.enable()
        second = busy_poll.enable()  # e.g. a second server in the same process
        busy_poll.disable(first)  # the first one's stop: not the second's polling
        busy_poll.poke()
        spinning = second.spinning
        busy_poll.disable(second)
        return spinning, busy_poll.seconds()

    assert event_loop.run(main()) == (True, 0.0)
    with busy_poll.paused():  # nothing enabled: nothing to pause
        pass


def test_a_poke_after_the_loop_closed_is_ignored() -> None:
    loop = asyncio.new_event_loop()
    poll = busy_poll.BusyPoll(loop, window=0.01)
    loop.close()
    poll.poke()  # e.g. a lane's last frame while the process shuts down: no error
    assert not poll.spinning


@pytest.mark.parametrize(
    ("choice", "device", "on"),
    [
        ("auto", "cuda", True),
        ("auto", "cuda:1", True),
        ("auto", "cpu", False),
        ("on", "cpu", True),
        ("off", "cuda", False),
    ],
)
def test_auto_busy_polls_gpu_processes_only(choice: str, device: str, on: bool) -> None:
    assert busy_poll.wanted(choice, device) is on
