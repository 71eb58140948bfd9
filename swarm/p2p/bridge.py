"""One trio thread per process, driven from asyncio.

py-libp2p runs only under trio; the rest of swarmgate is asyncio. `TrioThread` runs a trio
event loop in a dedicated thread and lets asyncio code run trio coroutines there:

- asyncio -> trio: `TrioToken.run_sync_soon` schedules a task in the thread's nursery;
- trio -> asyncio: `loop.call_soon_threadsafe` delivers the result (or the exception).

Cancellation crosses the boundary: when the awaiting asyncio task is cancelled, the trio task
is cancelled too. Exceptions cross as plain `P2PError`s carrying text (or as the `WireError`
raised), never as libp2p objects. Never block the trio thread: every connection stalls with it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import trio

from swarm.p2p.errors import NodeStoppedError, P2PError
from swarm.threads import glue_thread
from swarm.wire import WireError

log = logging.getLogger(__name__)

T = TypeVar("T")


def describe(exc: BaseException) -> str:
    """A one-line description of an exception from libp2p (which nests them in groups)."""
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return describe(exc.exceptions[0])
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _find_wire_error(exc: BaseException) -> WireError | None:
    if isinstance(exc, WireError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = _find_wire_error(sub)
            if found is not None:
                return found
    return None


def as_wire_error(exc: BaseException) -> WireError:
    """Our own error if one is inside (trio nests them in groups), else a P2PError text."""
    return _find_wire_error(exc) or P2PError(describe(exc))


class TrioThread:
    """A trio event loop in its own thread, with an asyncio-facing API."""

    def __init__(self, name: str = "swarm-p2p") -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop_event: trio.Event | None = None
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()

    @property
    def running(self) -> bool:
        return self._nursery is not None

    def in_trio_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    # -- lifecycle (asyncio side) ------------------------------------------------------

    async def start(self, body: Callable[[], AbstractAsyncContextManager[None]]) -> None:
        """Start the thread and enter `body()` inside it; return once it is entered.

        Tasks started through `call`/`spawn` run in a nursery nested inside `body()`, so they
        are all cancelled before `body()` exits on `stop()`.
        """
        if self._thread is not None:
            raise RuntimeError("TrioThread already started")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(body, ready), name=self.name, daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(ready)

    async def stop(self) -> None:
        """Cancel every task, exit `body()`, and join the thread. Idempotent."""
        if self._thread is None:
            return
        if self._token is not None and self._stop_event is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._stop_event.set)
        with contextlib.suppress(BaseException):
            await asyncio.wrap_future(self._done)
        self._thread.join()

    def _thread_main(
        self,
        body: Callable[[], AbstractAsyncContextManager[None]],
        ready: concurrent.futures.Future[None],
    ) -> None:
        glue_thread()  # frames pass through here: never an OpenMP team of its own
        try:
            trio.run(self._trio_main, body, ready)
        except BaseException as e:
            if not ready.done():
                ready.set_exception(as_wire_error(e))
            log.debug("trio thread ended with %s", describe(e))
            self._done.set_exception(as_wire_error(e))
        else:
            if not ready.done():
                ready.set_exception(NodeStoppedError("p2p thread ended during start"))
            self._done.set_result(None)

    async def _trio_main(
        self,
        body: Callable[[], AbstractAsyncContextManager[None]],
        ready: concurrent.futures.Future[None],
    ) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop_event = trio.Event()
        try:
            async with body(), trio.open_nursery() as nursery:
                self._nursery = nursery
                ready.set_result(None)
                await self._stop_event.wait()
                self._nursery = None
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None

    # -- asyncio -> trio ---------------------------------------------------------------

    def run_sync_soon(self, fn: Callable[[], Any]) -> bool:
        """Schedule a quick synchronous call in the trio thread; False if it is gone."""
        if self._token is None:
            return False
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:
            return False
        return True

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `await fn(*args)` in the trio thread and return its result here.

        Cancelling the awaiting asyncio task cancels the trio task. Failures come back as
        `WireError`s (P2PError for anything libp2p raised).
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        scope = trio.CancelScope()

        def settle(ok: bool, value: Any) -> None:  # asyncio thread
            if fut.done():
                return
            if ok:
                fut.set_result(value)
            elif isinstance(value, asyncio.CancelledError):
                fut.cancel()
            else:
                fut.set_exception(value)

        def post(ok: bool, value: Any) -> None:  # trio thread
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting
                loop.call_soon_threadsafe(settle, ok, value)

        async def runner() -> None:
            try:
                with scope:
                    value = await fn(*args)
                    post(True, value)
                    return
                post(False, asyncio.CancelledError())
            except trio.Cancelled:
                post(False, NodeStoppedError("p2p node stopped during the call"))
                raise
            except Exception as e:
                post(False, as_wire_error(e))

        def launch() -> None:  # trio thread
            if self._nursery is None:
                post(False, NodeStoppedError())
                return
            self._nursery.start_soon(runner)

        if not self.run_sync_soon(launch):
            raise NodeStoppedError()
        try:
            return await fut
        except asyncio.CancelledError:
            self.run_sync_soon(scope.cancel)
            raise

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        """Start `fn(*args)` in the trio thread without waiting; failures are logged.

        Callable from either thread. False if the thread is gone.
        """

        async def runner() -> None:
            try:
                await fn(*args)
            except Exception as e:
                log.debug(
                    "background p2p task %s failed: %s", getattr(fn, "__name__", fn), describe(e)
                )

        def launch() -> None:
            if self._nursery is not None:
                self._nursery.start_soon(runner)

        if self.in_trio_thread():
            launch()
            return self._nursery is not None
        return self.run_sync_soon(launch)

    # -- trio side -----------------------------------------------------------------------

    @property
    def nursery(self) -> trio.Nursery:
        """The nursery for background trio tasks (trio thread only)."""
        if self._nursery is None:
            raise NodeStoppedError()
        return self._nursery
