"""Compute turns (`swarm.compute_turns`): one process and one thread computes at a time."""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.compute_turns import NO_TURNS, ComputeTurns

HOLDER = """
import sys
from swarm.compute_turns import ComputeTurns
turns = ComputeTurns(sys.argv[1])
turns.acquire()
print("HELD", flush=True)
sys.stdin.readline()  # hold the turn until told (or killed)
turns.release()
print("RELEASED", flush=True)
sys.stdin.readline()
"""


def turn_is_free(path: Path) -> bool:
    """Whether nobody holds the turn now (probed on a file description of our own)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the probe's lock too
    return True


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    path = tmp_path / "compute.turns"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None and proc.stdout.readline() == "HELD\n"
    try:
        yield proc, path
    finally:
        proc.kill()
        proc.wait(10)


def test_another_process_waits_for_the_turn(
    holder: tuple[subprocess.Popen[str], Path],
) -> None:
    proc, path = holder
    assert proc.stdin is not None and proc.stdout is not None
    assert not turn_is_free(path)
    turns = ComputeTurns(path)
    took = threading.Event()

    def compute() -> None:
        turns.acquire()
        took.set()
        turns.release()

    waiter = threading.Thread(target=compute)
    waiter.start()
    assert not took.wait(0.5)  # the other process still holds it
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "RELEASED\n"
    waiter.join(30)
    assert took.is_set()
    assert turn_is_free(path)  # handed back after the computation
    turns.close()


def test_a_killed_holder_frees_the_turn(holder: tuple[subprocess.Popen[str], Path]) -> None:
    proc, path = holder
    assert not turn_is_free(path)
    proc.kill()
    proc.wait(10)
    turns = ComputeTurns(path)
    turns.acquire()
    assert not turn_is_free(path)
    turns.release()
    turns.close()


def test_threads_of_one_process_take_turns_too(tmp_path: Path) -> None:
    turns = ComputeTurns(tmp_path / "compute.turns")
    inside, most = 0, 0
    guard = threading.Lock()

    def compute() -> None:
        nonlocal inside, most
        for _ in range(200):
            turns.acquire()
            with guard:
                inside += 1
                most = max(most, inside)
            sum(range(200))  # some work while holding the turn
            with guard:
                inside -= 1
            turns.release()

    threads = [threading.Thread(target=compute) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert most == 1
    turns.close()


def test_a_turn_taken_on_one_thread_is_released_on_another(tmp_path: Path) -> None:
    """What `take` does: a helper thread waits for the turn, the event loop's thread ends it."""
    path = tmp_path / "compute.turns"
    turns = ComputeTurns(path)
    helper = threading.Thread(target=turns.acquire)
    helper.start()
    helper.join(30)
    assert not turn_is_free(path)
    turns.release()
    assert turn_is_free(path)
    turns.acquire()  # and it can be taken again
    turns.release()
    turns.close()


def test_no_turns_computes_at_once() -> None:
    NO_TURNS.acquire()
    NO_TURNS.acquire()  # no lock to hold: taking it twice cannot deadlock
    NO_TURNS.release()
    NO_TURNS.release()
    asyncio.run(NO_TURNS.take())


def test_an_event_loop_keeps_running_while_it_waits_for_its_turn(
    holder: tuple[subprocess.Popen[str], Path],
) -> None:
    proc, path = holder
    assert proc.stdin is not None and proc.stdout is not None
    turns = ComputeTurns(path)

    async def main() -> int:
        ticks = 0
        waiting = asyncio.create_task(turns.take())
        while ticks < 20:  # the loop runs while another process holds the turn
            await asyncio.sleep(0.01)
            ticks += 1
        assert not waiting.done()
        proc.stdin.write("\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        await asyncio.wait_for(waiting, 30)
        assert not turn_is_free(path)  # ours now
        turns.release()
        return ticks

    assert asyncio.run(main()) == 20
    assert proc.stdout.readline() == "RELEASED\n"
    assert turn_is_free(path)
    turns.close()


def test_a_waiter_cancelled_gives_the_turn_back_when_it_comes(
    holder: tuple[subprocess.Popen[str], Path],
) -> None:
    proc, path = holder
    assert proc.stdin is not None
    turns = ComputeTurns(path)

    async def main() -> None:
        waiting = asyncio.create_task(turns.take())
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        proc.stdin.write("\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        # the cancelled wait's helper thread gets the turn and hands it straight back, so it
        # can be taken again (without that, this would wait for ever on the thread lock)
        await asyncio.wait_for(turns.take(), 30)
        turns.release()

    asyncio.run(main())
    assert turn_is_free(path)
    turns.close()


def test_a_bad_path_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        ComputeTurns(tmp_path / "missing" / "compute.turns")
