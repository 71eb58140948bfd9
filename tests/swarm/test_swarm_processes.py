"""Three separate OS processes on 127.0.0.1: A bootstraps, B and C join through A.

The processes share one module-scoped swarm; the tests run in file order and the last one
stops everything and checks that each process exits 0 without leftover threads or sockets.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MODEL = "ab" * 32
NUM_BLOCKS = 8
WAIT = 30.0  # upper bound for anything to happen; reaching it fails the test


class NodeProc:
    """One node_proc process and its JSON-lines conversation."""

    def __init__(self, name: str, log_dir: Path, *args: str) -> None:
        self.name = name
        self.stderr = (log_dir / f"{name}.stderr").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.swarm.node_proc", *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        threading.Thread(target=self._pump, daemon=True).start()
        ready = self.wait_event("ready")
        self.peer_id: str = ready["peer_id"]
        self.maddrs: list[str] = ready["maddrs"]

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def _next(self, deadline: float) -> dict[str, Any]:
        try:
            msg = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"{self.name}: no answer within {WAIT} s") from None
        if msg is None:
            raise AssertionError(f"{self.name} exited (code {self.proc.wait()})")
        return msg

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        self._next_id += 1
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": self._next_id, "cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + WAIT
        while True:
            msg = self._next(deadline)
            if "event" in msg:
                self.events.append(msg)
            elif msg.get("id") == self._next_id:
                if not msg["ok"]:
                    raise AssertionError(f"{self.name}.{cmd}: {msg['error']}")
                return msg

    def wait_event(self, name: str) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while True:
            for e in self.events:
                if e["event"] == name:
                    self.events.remove(e)
                    return e
            self.events.append(self._next(deadline))

    def stop(self) -> tuple[int, dict[str, Any]]:
        report = self.call("stop")
        code = self.proc.wait(timeout=WAIT)
        self.stderr.close()
        return code, report

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def eventually(fn: Any, what: str) -> Any:
    """Poll `fn` until it returns something truthy (bounded by WAIT)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        result = fn()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProc]]:
    logs = tmp_path_factory.mktemp("swarm-procs")
    procs: dict[str, NodeProc] = {}
    try:
        procs["A"] = NodeProc("A", logs, "--identity", str(logs / "a.key"))
        boot = procs["A"].maddrs[0]
        procs["B"] = NodeProc("B", logs, "--bootstrap", boot)
        procs["C"] = NodeProc("C", logs, "--bootstrap", boot)
        yield procs
    finally:
        for p in procs.values():
            p.kill()


def peer_in_view(view: dict[str, Any], peer_id: str) -> dict[str, Any] | None:
    for model in view["models"]:
        for p in model["peers"]:
            if p["peer_id"] == peer_id:
                return {"model": model, "peer": p}
    return None


def test_c_finds_b_capability_record_and_block_providers(nodes: dict[str, NodeProc]) -> None:
    b, c = nodes["B"], nodes["C"]
    b.call("announce", model_hash=MODEL, num_blocks=NUM_BLOCKS, start=0, end=4, throughput=12.5)
    for block in (0, 3):
        found = eventually(
            lambda block=block: (
                b.peer_id in c.call("providers", model_hash=MODEL, block=block)["providers"]
            ),
            f"C sees B providing block {block}",
        )
        assert found
    assert b.peer_id not in c.call("providers", model_hash=MODEL, block=5)["providers"]
    seen = eventually(
        lambda: peer_in_view(c.call("view", models=[MODEL]), b.peer_id), "B in C's view"
    )
    model, peer = seen["model"], seen["peer"]
    assert (peer["start"], peer["end"]) == (0, 4)
    assert peer["throughput_decode"] == 12.5 and peer["reachable"] and peer["rtt_ms"] > 0
    assert model["name"] == "test-model" and model["num_blocks"] == NUM_BLOCKS
    assert model["coverage"] == [1, 1, 1, 1, 0, 0, 0, 0] and not model["complete"]
    # without naming the model, C discovers it through the peers it knows
    assert peer_in_view(c.call("view"), b.peer_id)


def test_an_updated_record_replaces_the_old_one_everywhere(nodes: dict[str, NodeProc]) -> None:
    a, b, c = nodes["A"], nodes["B"], nodes["C"]
    old = c.call("record", peer_id=b.peer_id)["found"]
    assert (old["start"], old["end"]) == (0, 4)
    b.call("announce", model_hash=MODEL, num_blocks=NUM_BLOCKS, start=4, end=8)
    for proc in (a, b, c):
        rec = proc.call("record", peer_id=b.peer_id)
        assert (rec["found"]["start"], rec["found"]["end"]) == (4, 8), proc.name
        assert rec["found"]["ts"] > old["ts"]
    # the DHT servers that held the old record now hold the new one
    stored = [p.call("record", peer_id=b.peer_id)["local"] for p in (a, c)]
    assert all(s is None or (s["start"], s["end"]) == (4, 8) for s in stored)
    assert any(s is not None for s in stored)
    view = c.call("view", models=[MODEL])
    assert peer_in_view(view, b.peer_id)["peer"]["start"] == 4  # type: ignore[index]
    assert view["models"][0]["coverage"] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_expired_and_offline_records_disappear_from_the_view(nodes: dict[str, NodeProc]) -> None:
    a, b, c = nodes["A"], nodes["B"], nodes["C"]
    # A goes offline explicitly: gone at once
    a.call("announce", model_hash=MODEL, num_blocks=NUM_BLOCKS, start=0, end=2)
    assert peer_in_view(c.call("view", models=[MODEL]), a.peer_id)
    a.call("stop_announcing", offline=True)
    assert not peer_in_view(c.call("view", models=[MODEL]), a.peer_id)
    # B stops republishing a short-lived record: gone once it expires
    b.call("stop_announcing", offline=False)
    b.call(
        "announce", model_hash=MODEL, num_blocks=NUM_BLOCKS, start=0, end=8, ttl=5.0, interval=3600
    )
    assert peer_in_view(c.call("view", models=[MODEL]), b.peer_id)
    eventually(
        lambda: not peer_in_view(c.call("view", models=[MODEL]), b.peer_id), "B's record expires"
    )
    assert c.call("record", peer_id=b.peer_id)["found"] is None
    # providers stay (they cannot be withdrawn) but no longer count without a live record
    assert b.peer_id in c.call("providers", model_hash=MODEL, block=0)["providers"]


def test_a_dialer_offering_only_plaintext_gets_no_connection(nodes: dict[str, NodeProc]) -> None:
    a = nodes["A"]
    out = subprocess.run(
        [sys.executable, "-m", "tests.swarm.node_proc", "--plaintext-dial", a.maddrs[0]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["connected"] is False and result["error"]
    assert result["peer_id"] not in a.call("peers")["connected"]


def test_a_cancelled_request_cancels_the_handler_in_the_other_process(
    nodes: dict[str, NodeProc],
) -> None:
    b, c = nodes["B"], nodes["C"]
    c.call("serve_slow")
    b.call("request_start", peer_id=c.peer_id)
    started = c.wait_event("handler_started")
    assert started["from"] == b.peer_id
    assert b.call("request_cancel")["cancelled"] is True
    c.wait_event("handler_cancelled")


def test_swarm_command_prints_the_map(nodes: dict[str, NodeProc]) -> None:
    a, c = nodes["A"], nodes["C"]
    c.call("announce", model_hash=MODEL, num_blocks=NUM_BLOCKS, start=0, end=NUM_BLOCKS)
    swarm_cmd = [sys.executable, "-m", "swarm.swarm_cli", "--bootstrap", a.maddrs[0]]
    # through the real entry point once (`swarmgate swarm`), then the module directly
    entry = [sys.executable, "-m", "swarm.cli", "swarm", "--bootstrap", a.maddrs[0], "--json"]
    out = subprocess.run(entry, cwd=ROOT, capture_output=True, text=True, timeout=WAIT * 2)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    (model,) = [m for m in data["models"] if m["model_hash"] == MODEL]
    assert model["complete"] and model["coverage"] == [1] * NUM_BLOCKS
    (peer,) = [p for p in model["peers"] if p["peer_id"] == c.peer_id]
    assert (peer["start"], peer["end"]) == (0, NUM_BLOCKS) and peer["rtt_ms"] > 0
    table = subprocess.run(swarm_cmd, cwd=ROOT, capture_output=True, text=True, timeout=WAIT * 2)
    assert table.returncode == 0 and "complete" in table.stdout and c.peer_id[-14:] in table.stdout
    dead = subprocess.run(
        [*swarm_cmd[:-1], f"/ip4/127.0.0.1/tcp/1/p2p/{a.peer_id}", "--timeout", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
    )
    assert dead.returncode == 1 and "no bootstrap peer reachable" in dead.stderr


def test_processes_stop_cleanly(nodes: dict[str, NodeProc]) -> None:
    for name in ("C", "B", "A"):
        code, report = nodes[name].stop()
        assert code == 0, name
        assert report["threads"] == ["MainThread"], (name, report["threads"])
        assert report["leaked_fds"] == [], (name, report["leaked_fds"])
