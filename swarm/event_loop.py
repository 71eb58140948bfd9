"""The event loop every swarmgate process runs on: uvloop where it is installed.

uvloop (libuv under asyncio's API) makes what the serving path does most cheaper: socket reads
and writes, callbacks and futures, wake-ups from other threads. `SWARMGATE_LOOP=asyncio` picks
the standard loop instead (for comparisons, or if a platform's uvloop misbehaves).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# seconds: the shortest wait uvloop's timers honour (its clock moves in whole milliseconds, and
# a shorter timer fires at once): polling waits sleep at least this long instead of spinning
TIMER_GRAIN = 0.001


def retrieved(task: asyncio.Future[Any]) -> None:
    """A done-callback that marks a background task's error as seen (its awaiter may be gone,
    and asyncio would log "exception was never retrieved")."""
    if not task.cancelled():
        task.exception()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor, or None for asyncio's default loop."""
    if os.environ.get("SWARMGATE_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop `loop_factory` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
