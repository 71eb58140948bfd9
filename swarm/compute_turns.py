"""Compute turns: the processes that share one machine's CPU cores compute one at a time.

`swarmgate up` runs its peers and the gateway's head on one machine, and each of them computes
with all of the machine's cores (one OpenMP team per process). Two that compute at once
oversubscribe the cores, and libgomp's spinning workers then slow both down far more than
taking turns would. Measured on the 2-core CPU VM, 8 streams of SmolLM2 through 2 peers: a
peer's compute per round was 20.7 ms p50 but 39.3 ms mean, with rounds that overlapped the
other peer's compute taking up to 420 ms; with turns 23.6 ms p50 and 27.7 ms mean, and the
aggregate went from 63.5 and 69.0 tok/s to 94.4 and 82.2 tok/s (runs alternated).

A turn is an exclusive `flock` on a file that every process of the machine opens (`up` makes
one in its work folder and passes it to its peers and its gateway). The kernel hands the lock
to one waiter at a time, in no fixed order, and frees it when its holder's file closes, so a
crashed process never blocks the others. Inside a process a thread lock comes first, since
`flock` locks belong to the open file, which the process's threads share. An event loop waits
for its turn on a helper thread (`take`), so it keeps answering while another process computes.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading


class ComputeTurns:
    """This process's turns on a file (`acquire`/`take`, then `release`); without a path, every
    turn is taken at once (no turns)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self._thread_lock = threading.Lock()
        # opened now, so a bad path fails at start, not at the first computation
        self._fd = None if self.path is None else os.open(self.path, _FLAGS, 0o600)

    def acquire(self) -> None:
        """Wait for this process's turn (blocking the calling thread)."""
        if self._fd is None:
            return
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def _try_acquire(self) -> bool:
        """Take the turn if nobody holds it; False at once otherwise."""
        assert self._fd is not None
        if not self._thread_lock.acquire(blocking=False):
            return False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._thread_lock.release()
            return False
        except BaseException:
            self._thread_lock.release()
            raise
        return True

    def release(self) -> None:
        """End the turn (from any thread of the process)."""
        if self._fd is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    async def take(self) -> None:
        """Wait for the turn on a helper thread, so the event loop keeps running meanwhile;
        `release` ends it. A caller cancelled while waiting gives the turn back as it comes."""
        if self._fd is None or self._try_acquire():  # a free turn: no thread hop
            return
        waiting = asyncio.get_running_loop().run_in_executor(None, self.acquire)
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            waiting.add_done_callback(
                lambda done: None if done.cancelled() or done.exception() else self.release()
            )
            raise

    def close(self) -> None:
        """Close the file, once no turn of this process is held."""
        with self._thread_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
NO_TURNS = ComputeTurns()  # computes at once: a machine of its own
