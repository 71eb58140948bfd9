"""An opt-in timeline of the serving path, for finding where a token's time goes.

With `SWARMGATE_TRACE=<folder>` in its environment, a process records events (what, when on
`time.perf_counter()`, which peer, how many rows) in memory and writes them to
`<folder>/<role>-<pid>.jsonl` when it exits. `perf_counter` is the system's monotonic clock, so
the files of the processes of one machine line up. `bench/timeline.py` reads them. Off (the
default), a mark is one test of a module global.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path

MAX_EVENTS = 2_000_000  # ~200 MB at most; later events are dropped

_events: list[tuple[float, str, str, int]] | None = None
_role = "process"


def start(role: str) -> None:
    """Record this process's events if `SWARMGATE_TRACE` names a folder (call once, early)."""
    global _events, _role
    folder = os.environ.get("SWARMGATE_TRACE")
    if not folder or _events is not None:
        return
    _events, _role = [], role
    atexit.register(_write, Path(folder))


def mark(event: str, peer: str = "", rows: int = 0) -> None:
    """One event now: `peer` names the other side (its id's tail), `rows` the rows involved."""
    if _events is not None and len(_events) < MAX_EVENTS:
        _events.append((time.perf_counter(), event, peer[-8:], rows))


def _write(folder: Path) -> None:
    events = _events or []
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_role}-{os.getpid()}.jsonl"
    with path.open("w") as out:
        for when, event, peer, rows in events:
            out.write(json.dumps({"t": when, "e": event, "p": peer, "n": rows}) + "\n")
