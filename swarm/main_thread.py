"""Model compute on the process's main thread: beside the asyncio program, or inline in it.

Measured on our CPU machines (torch 2.13, MKL, 2 cores): a decode step of 15 SmolLM2 blocks
takes 12-14 ms on the main thread and 21-25 ms on a helper thread, or when the span was built
on a different helper thread than the one computing; no OpenMP/MKL/malloc setting changed it.
So a process that computes (a peer) keeps its main thread for compute and builds its span
there: `run_async_with_compute` starts the asyncio program in a helper thread (torch on one
thread there, `swarm.threads`: the 21-25 ms above was OpenMP teams of other threads) and
hands it a `MainThreadExecutor`; the main thread runs the submitted work in order until the
program ends. SIGINT/SIGTERM, which Python delivers only to the main thread, are forwarded to
the program through the `on_signal` callback it registers.

`run_async_inline` is the other way (`--compute inline`): the asyncio program itself runs on
the main thread and its compute runs inline, on the loop (`InlineExecutor`). A step then costs
no hand-off to the compute thread and none back (a CPU peer of SmolLM2, one stream: peer queue
0.24 -> 0.13 ms, after compute 0.46 -> 0.30 ms per hop), but the loop answers nothing while
the span computes: a prefill of several seconds delays lane handshakes (5 s limit) and resumes
(2 s) of other clients past their limits. So on a CPU it is opt-in, for peers whose
computations are short (decode-heavy traffic, short prompts). On a GPU every step is short (a
decode step of 16 Llama-3-8B blocks ~3 ms, a prefill tens of ms) and `auto`, the default,
computes inline there: on an H100, one stream 86.2 -> 93.7 tok/s, 32 streams 1116 -> 1187
(median of 3), a one-prefill request's overhead 12.4 -> 10.5 ms (`bench/gpu.py`, one call).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import queue
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from swarm import event_loop
from swarm.threads import glue_thread

T = TypeVar("T")

_STOP = object()


class MainThreadExecutor(concurrent.futures.Executor):
    """An executor whose work runs on the thread that calls `run_forever` (the main thread)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self.signal_handler: Callable[[int], None] | None = None

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._closed:
            future.set_exception(RuntimeError("the compute executor has stopped"))
        else:
            self._take(future, functools.partial(fn, *args, **kwargs))
        return future

    def _take(self, future: concurrent.futures.Future[Any], work: Callable[[], Any]) -> None:
        """Queue the work for the thread in `run_forever`."""
        self._queue.put((future, work))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shared executors are stopped only by their owner (`stop`); this does nothing."""

    def stop(self) -> None:
        self._closed = True
        self._queue.put(_STOP)

    def run_forever(self) -> None:
        """Run submitted work until `stop`; waits in short slices so signals get handled."""
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is _STOP:
                break
            _run(*item)
        while True:  # fail anything submitted after the stop
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item[0].set_exception(RuntimeError("the compute executor has stopped"))


def _run(future: concurrent.futures.Future[Any], work: Callable[[], Any]) -> None:
    """Do `work` for `future` (unless it was cancelled): its result or its error."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(work())
    except BaseException as error:  # handed to whoever awaits it
        future.set_exception(error)


def run_async_with_compute(
    program: Callable[[MainThreadExecutor], Coroutine[Any, Any, int]],
) -> int:
    """Run `program(executor)` under asyncio in a helper thread; compute on this thread."""
    executor = MainThreadExecutor()
    outcome: dict[str, Any] = {}

    def body() -> None:
        glue_thread()  # the compute is this process's main thread's alone (swarm.threads)
        try:
            outcome["code"] = event_loop.run(program(executor))
        except BaseException as error:
            outcome["error"] = error
        finally:
            executor.stop()

    def forward(signum: int, _frame: object) -> None:
        _deliver(executor, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=body, name="asyncio", daemon=True)
    thread.start()
    try:
        executor.run_forever()
    finally:
        thread.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "error" in outcome:
        raise outcome["error"]
    code: int = outcome["code"]
    return code


def on_signal(executor: MainThreadExecutor, callback: Callable[[], None]) -> None:
    """Call `callback` on the running loop when the process gets SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()

    def handler(_signum: int) -> None:
        loop.call_soon_threadsafe(callback)

    executor.signal_handler = handler


class InlineExecutor(MainThreadExecutor):
    """Runs submitted work at once, on the thread that submits it (the event loop's own):
    `loop.run_in_executor(inline, fn)` computes `fn` before it returns."""

    def _take(self, future: concurrent.futures.Future[Any], work: Callable[[], Any]) -> None:
        """Compute the work now."""
        _run(future, work)

    def run_forever(self) -> None:
        raise RuntimeError("an inline executor has no thread of its own to run")


def run_async_inline(
    program: Callable[[MainThreadExecutor], Coroutine[Any, Any, int]],
) -> int:
    """Run `program(executor)` under asyncio on this (the main) thread, its compute inline."""
    executor = InlineExecutor()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    async def body() -> int:
        loop = asyncio.get_running_loop()
        for signum in previous:
            loop.add_signal_handler(signum, _deliver, executor, signum)
        try:
            return await program(executor)
        finally:
            executor.stop()

    try:
        return event_loop.run(body())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _deliver(executor: MainThreadExecutor, signum: int) -> None:
    if executor.signal_handler is not None:
        executor.signal_handler(signum)
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt


COMPUTE_MODES = ("auto", "thread", "inline")


def compute_mode(choice: str, device: str) -> str:
    """`thread` or `inline` for a peer's `--compute` choice: `auto` is inline on a GPU (short
    steps) and a thread on a CPU (prefills of seconds)."""
    if choice != "auto":
        return choice
    return "inline" if device.startswith("cuda") else "thread"


def add_compute_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compute",
        choices=COMPUTE_MODES,
        default="auto",
        help="where a peer's span computes: on the main thread beside the event loop's thread "
        "(the loop keeps reading and answering meanwhile), or inline on the loop (no thread "
        "hand-offs per step, but nothing is answered while a long prefill computes); auto "
        "(default): inline with --device cuda, thread otherwise",
    )
