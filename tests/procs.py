"""Test helpers: real `swarmgate` processes on loopback, started and stopped cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SWARMGATE = [sys.executable, "-m", "swarm.cli"]


@dataclass
class Proc:
    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    ready: dict[str, object] = field(default_factory=dict)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return int(self.popen.returncode)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    @property
    def output(self) -> str:
        return "".join(self.lines)


def start(
    args: list[str], marker: str, timeout: float = 240.0, env: dict[str, str] | None = None
) -> Proc:
    """Run `swarmgate <args>` and wait for a stdout line starting with `marker` + JSON."""
    popen = subprocess.Popen(
        [*SWARMGATE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=Path(__file__).resolve().parents[1],
    )
    proc = Proc(popen)
    got = threading.Event()

    def pump() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            proc.lines.append(line)
            if line.startswith(marker) and not got.is_set():
                proc.ready.update(json.loads(line[len(marker) :]))
                got.set()
        got.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not got.wait(0.2):
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"swarmgate {' '.join(args)} not ready:\n{proc.output}")
    if not proc.ready:
        proc.kill()
        raise RuntimeError(f"swarmgate {' '.join(args)} exited:\n{proc.output}")
    return proc


def start_peer(*args: str, bootstrap: str | None = None) -> Proc:
    extra = ["--bootstrap", bootstrap] if bootstrap else []
    return start(["peer", *args, *extra], "PEER_READY ")
