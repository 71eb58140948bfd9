"""Busy polling: the event loop stays awake for a short while after each message.

A process that blocks in epoll between the messages of a request wakes slowly on an idle
machine: measured on the H100 device host, a 200-byte TCP round trip between two processes
takes 26 µs back to back and 166-243 µs once both waited 10-200 ms (the cores idle, the
hypervisor halts them), and the second peer of a chain, which has its session's open a few
milliseconds before the step, took 0.59 ms to see that step against 0.16 ms for the first.

While armed, `BusyPoll` keeps a callback in the loop's ready queue, so every turn of the loop
polls its sockets with a zero timeout instead of sleeping; it re-arms for `window` seconds on
every `poke()` (a lane frame in or out, an API request arriving). The cost is one core per
process while traffic flows, which a GPU host has to spare; on a CPU-only machine those cores
compute the model, so `auto` (the default of `--busy-poll`) turns it on only with `--device
cuda`.

A spinning loop thread takes the GIL back right after each zero-timeout poll, so another
thread of the process that wants it (the gateway's LM-head thread, a peer's compute thread)
could wait a switch interval each time: work handed to such a thread runs inside `paused()`,
and the loop sleeps until it is back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Iterator

BUSY_POLL_MODES = ("auto", "on", "off")
WINDOW = 0.05  # seconds the loop stays awake after the last message


class BusyPoll:
    """Keeps one loop spinning for `window` seconds after each `poke()` (loop thread only)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, window: float = WINDOW) -> None:
        self.loop = loop
        self.window = window
        self._seconds = 0.0  # how long the loop was kept awake, finished spells only
        self._until = 0.0
        self._since = 0.0  # when the current spell of spinning began
        self._spinning = False  # the callback is queued
        self._counting = False  # the current spell's time counts (not once held)
        self._holds = 0  # `hold()`s not yet released: no spinning meanwhile

    def poke(self) -> None:
        """A message came or went: keep the loop awake for the next `window` seconds."""
        if self.loop.is_closed():
            return
        now = time.perf_counter()
        self._until = now + self.window
        self._spin(now)

    def hold(self) -> None:
        """Stop spinning until `release()`: another thread of this process needs the GIL."""
        self._holds += 1
        self._stop_counting()  # the callback ends the spell at its next turn (maybe only
        # after inline work that blocks the loop: that time is not polling)

    def release(self) -> None:
        assert self._holds > 0, "release() without hold()"
        self._holds -= 1
        if not self._holds and not self.loop.is_closed():
            self._spin(time.perf_counter())  # what is left of the window

    def _spin(self, now: float) -> None:
        if self._holds or now >= self._until:
            return
        if not self._counting:
            self._counting, self._since = True, now
        if not self._spinning:
            self._spinning = True
            self.loop.call_soon(self._tick)

    def _tick(self) -> None:
        if time.perf_counter() < self._until and not self._holds:
            self.loop.call_soon(self._tick)  # the loop's next turn polls with no timeout
            return
        self._spinning = False
        self._stop_counting()

    def _stop_counting(self) -> None:
        if self._counting:
            self._counting = False
            self._seconds += time.perf_counter() - self._since

    @property
    def spinning(self) -> bool:
        """Is the loop being kept awake now?"""
        return self._spinning

    @property
    def seconds(self) -> float:
        """How long the loop was kept awake so far, the current spell included."""
        spell = time.perf_counter() - self._since if self._counting else 0.0
        return self._seconds + spell


_current: BusyPoll | None = None


def enable(window: float = WINDOW) -> BusyPoll:
    """Busy-poll the running loop from now on (a process runs one loop that polls)."""
    global _current
    _current = BusyPoll(asyncio.get_running_loop(), window)
    return _current


def disable(poll: BusyPoll | None = None) -> None:
    """Stop busy polling (only if `poll`, when given, is the one enabled)."""
    global _current
    if poll is None or poll is _current:
        _current = None


def _mine() -> BusyPoll | None:
    """The enabled poll if it is the running loop's (another thread's loop is left alone)."""
    poll = _current
    if poll is None:
        return None
    try:
        return poll if poll.loop is asyncio.get_running_loop() else None
    except RuntimeError:  # no loop runs in this thread
        return None


def poke() -> None:
    """A message came or went: keep the loop awake a while (nothing when not enabled)."""
    poll = _mine()
    if poll is not None:
        poll.poke()


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No spinning while the block runs (around work handed to another thread)."""
    poll = _mine()
    if poll is None:
        yield
        return
    poll.hold()
    try:
        yield
    finally:
        poll.release()


def seconds() -> float:
    """How long this process's loop was kept awake so far (0 when not enabled)."""
    return _current.seconds if _current is not None else 0.0


def wanted(choice: str, device: str) -> bool:
    """Whether `--busy-poll choice` busy-polls a process that computes on `device`."""
    if choice == "auto":
        return device.startswith("cuda")
    return choice == "on"


def add_busy_poll_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--busy-poll",
        choices=BUSY_POLL_MODES,
        default="auto",
        help="keep the event loop awake (polling, one core) for "
        f"{WINDOW * 1e3:.0f} ms after each message, instead of sleeping until the next: "
        "quicker answers on idle cores; auto (default): on with --device cuda only",
    )
