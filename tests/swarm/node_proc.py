"""A swarm node in its own OS process, driven by a test over stdin/stdout JSON lines.

    python -m tests.swarm.node_proc [--bootstrap MADDR ...] [--identity PATH]
    python -m tests.swarm.node_proc --plaintext-dial MADDR

Each stdin line is `{"id": n, "cmd": name, ...args}`; the answer is `{"id": n, "ok": true, ...}`
or `{"id": n, "ok": false, "error": text}`. Unsolicited lines are `{"event": name, ...}`; the
first is `ready` with the peer id and addresses. `stop` stops the node, reports the threads
and file descriptors left over, and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from swarm.announce import Announcer
from swarm.p2p import FrameStream, P2PNode
from swarm.records import ModelRecord, PeerRecord, block_key, peer_key, register_validators
from swarm.swarm_view import SwarmView
from swarm.wire import WireError

SLOW_PROTOCOL = "/test/slow/1"


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def open_fds() -> list[str]:
    out = []
    for fd in sorted(os.listdir("/proc/self/fd"), key=int):
        with contextlib.suppress(OSError):
            out.append(f"{fd}:{os.readlink(f'/proc/self/fd/{fd}')}")
    return out


class Driver:
    def __init__(self, node: P2PNode) -> None:
        self.node = node
        self.announcer: Announcer | None = None
        self.request_task: asyncio.Task[Any] | None = None

    async def announce(self, a: dict[str, Any]) -> dict[str, Any]:
        model = ModelRecord(
            name=a.get("name", "test-model"),
            model_hash=a["model_hash"],
            family="llama",
            num_blocks=a["num_blocks"],
            hidden_size=64,
            ts=1.0,
        )
        template = PeerRecord(
            peer_id=self.node.peer_id,
            addrs=(),
            model_hash=a["model_hash"],
            start=a["start"],
            end=a["end"],
            throughput_decode=a.get("throughput", 10.0),
        )
        if self.announcer is None:
            self.announcer = Announcer(
                self.node,
                lambda: template,
                model,
                ttl=a.get("ttl", 90.0),
                interval=a.get("interval", 30.0),
            )
            rec = await self.announcer.start()
        else:
            self.announcer.status = lambda: template
            self.announcer.ttl = a.get("ttl", self.announcer.ttl)
            rec = await self.announcer.announce()
        return {"ts": rec.ts, "expires": rec.expires}

    async def stop_announcing(self, a: dict[str, Any]) -> dict[str, Any]:
        if self.announcer is not None:
            await self.announcer.stop(offline=a.get("offline", True))
            self.announcer = None
        return {}

    async def record(self, a: dict[str, Any]) -> dict[str, Any]:
        """This node's view of a peer record: from its own DHT store, and via a lookup."""
        key = peer_key(a["peer_id"])
        local = await self.node.get_local(key)
        found = await self.node.get(key)
        return {
            "local": None if local is None else _record_json(local),
            "found": None if found is None else _record_json(found),
        }

    async def providers(self, a: dict[str, Any]) -> dict[str, Any]:
        found = await self.node.find_providers(block_key(a["model_hash"], a["block"]))
        return {"providers": [pid for pid, _addrs in found]}

    async def view(self, a: dict[str, Any]) -> dict[str, Any]:
        snap = await SwarmView(self.node).refresh(a.get("models"))
        return snap.to_json()

    async def serve_slow(self, a: dict[str, Any]) -> dict[str, Any]:
        async def slow(stream: FrameStream) -> None:
            await stream.recv()
            emit({"event": "handler_started", "from": stream.remote_peer_id})
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                emit({"event": "handler_cancelled"})
                raise

        await self.node.serve(SLOW_PROTOCOL, slow)
        return {}

    async def request_start(self, a: dict[str, Any]) -> dict[str, Any]:
        async def go() -> None:
            try:
                await self.node.request(a["peer_id"], SLOW_PROTOCOL, {"type": "work"}, timeout=None)
                emit({"event": "request_done"})
            except WireError as e:
                emit({"event": "request_error", "error": str(e)})

        self.request_task = asyncio.create_task(go())
        return {}

    async def request_cancel(self, a: dict[str, Any]) -> dict[str, Any]:
        task = self.request_task
        if task is None:
            raise RuntimeError("no request running")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return {"cancelled": task.cancelled()}

    async def peers(self, a: dict[str, Any]) -> dict[str, Any]:
        return {"connected": await self.node.connected_peers()}


def _record_json(value: bytes) -> dict[str, Any]:
    rec = PeerRecord.from_bytes(value)
    return {
        "peer_id": rec.peer_id,
        "start": rec.start,
        "end": rec.end,
        "ts": rec.ts,
        "state": rec.state,
    }


async def serve_commands(args: argparse.Namespace) -> int:
    fds_before = open_fds()
    node = P2PNode(
        identity_path=Path(args.identity) if args.identity else None, bootstrap=args.bootstrap
    )
    register_validators(node)
    await node.start()
    driver = Driver(node)
    emit({"event": "ready", "peer_id": node.peer_id, "maddrs": node.listen_maddrs})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while line := await reader.readline():
            msg = json.loads(line)
            cmd, mid = msg.pop("cmd"), msg.pop("id")
            if cmd == "stop":
                break
            try:
                result = await getattr(driver, cmd)(msg)
                emit({"id": mid, "ok": True, **result})
            except Exception as e:
                emit({"id": mid, "ok": False, "error": f"{type(e).__name__}: {e}"})
        else:
            mid = None
    finally:
        transport.close()
        if driver.announcer is not None:
            await driver.announcer.stop(offline=False)
        await node.stop()
    await asyncio.sleep(0)  # let the closed pipe transport release its fd
    # a socket object of a closed connection that sits in a reference cycle keeps its fd until
    # the collector finalizes it: only what is still referenced after a collection is a leak
    gc.collect()
    leaked = [fd for fd in open_fds() if fd not in fds_before and "/proc/" not in fd]
    emit(
        {
            "id": mid,
            "ok": True,
            "threads": [t.name for t in threading.enumerate()],
            "leaked_fds": leaked,
        }
    )
    return 0


def plaintext_dial(maddr: str) -> int:
    """Dial with a host that offers only plaintext security; report whether it connected."""
    import multiaddr
    import trio
    from libp2p import generate_new_ed25519_identity, new_host
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

    from swarm.p2p.logs import tame_libp2p_logging

    tame_libp2p_logging()
    key_pair = generate_new_ed25519_identity()
    host = new_host(
        key_pair=key_pair, sec_opt={TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(key_pair)}
    )
    result: dict[str, Any] = {"connected": False, "error": None}

    async def main() -> None:
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            info = info_from_p2p_addr(multiaddr.Multiaddr(maddr))
            try:
                with trio.fail_after(10):
                    await host.connect(info)
                result["connected"] = bool(host.get_network().connections.get(info.peer_id))
            except BaseException as e:  # trio groups errors; any failure means no connection
                result["error"] = type(e).__name__
            result["peer_id"] = str(host.get_id())
            await host.close()

    trio.run(main)
    emit(result)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", action="append", default=[])
    parser.add_argument("--identity")
    parser.add_argument("--plaintext-dial")
    args = parser.parse_args()
    if args.plaintext_dial:
        return plaintext_dial(args.plaintext_dial)
    return asyncio.run(serve_commands(args))


if __name__ == "__main__":
    sys.exit(main())
