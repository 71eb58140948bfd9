"""Cross-process p2p benchmark: RTT on a kept-open stream and throughput, against a baseline.

    .venv/bin/python bench/p2p.py [--rounds 500] [--json]

A child process serves an echo/ack protocol three ways: over swarmgate's p2p layer (libp2p with
Noise + Yamux, framed by swarm.wire, behind the trio thread), over a lane (the same frames over
TCP + Noise on the asyncio loop, swarm/lanes.py) and over a raw loopback TCP socket with a
5-byte length/mode prefix (the baseline). The parent measures both in the same run, so the figures are
read as ratios to the baseline (absolute numbers depend on the machine and its load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swarm.lanes import LANE_PROTOCOL, LaneServer, LaneStream, open_lane
from swarm.p2p import FrameStream, P2PNode

PROTOCOL = "/swarmgate/bench/1"
ECHO, ACK = 0, 1
TCP_HEAD = struct.Struct(">IB")
STEP_BYTES = 576 * 4  # one decode step of SmolLM2's hidden state in fp32


# ------------------------------------------------------------------------------ server side


async def serve() -> None:
    async def handler(stream: FrameStream | LaneStream) -> None:
        async for frame in stream:
            if frame.header["mode"] == ECHO:
                await stream.send({"mode": ECHO}, frame.tensors)
            else:
                await stream.send({"n": sum(t.numel() for t in frame.tensors)})

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                n, mode = TCP_HEAD.unpack(await reader.readexactly(TCP_HEAD.size))
                data = await reader.readexactly(n)
                if mode == ECHO:
                    writer.write(TCP_HEAD.pack(n, ECHO) + data)
                else:
                    writer.write(TCP_HEAD.pack(8, ACK) + struct.pack(">Q", n))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    async with P2PNode() as node:
        await node.serve(PROTOCOL, handler)
        lanes = LaneServer({PROTOCOL: handler})
        await lanes.start()
        await node.serve(LANE_PROTOCOL, lanes.take_ticket)
        server = await asyncio.start_server(tcp, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        print(
            json.dumps({"maddr": node.listen_maddrs[0], "peer_id": node.peer_id, "port": port}),
            flush=True,
        )
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
        server.close()
        await server.wait_closed()
        await lanes.close()


# ------------------------------------------------------------------------------ client side

Exchange = Callable[[bytes, int], Awaitable[None]]


async def p2p_exchange(
    node: P2PNode, peer_id: str, maddr: str, lane: bool
) -> tuple[Exchange, FrameStream | LaneStream]:
    stream: FrameStream | LaneStream
    if lane:
        stream = await open_lane(node, peer_id, PROTOCOL, [maddr])
    else:
        stream = await node.open_stream(peer_id, PROTOCOL, [maddr])

    async def exchange(payload: bytes, mode: int) -> None:
        tensors = [torch.frombuffer(bytearray(payload), dtype=torch.uint8)] if payload else []
        await stream.send({"mode": mode}, tensors)
        await stream.recv()

    return exchange, stream


async def tcp_exchange(port: int) -> tuple[Exchange, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def exchange(payload: bytes, mode: int) -> None:
        writer.write(TCP_HEAD.pack(len(payload), mode))
        writer.write(payload)
        await writer.drain()
        n, _ = TCP_HEAD.unpack(await reader.readexactly(TCP_HEAD.size))
        await reader.readexactly(n)

    return exchange, writer


async def rtts(exchange: Exchange, payload: bytes, rounds: int) -> list[float]:
    for _ in range(20):  # warm up
        await exchange(payload, ECHO)
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await exchange(payload, ECHO)
        out.append(time.perf_counter() - t0)
    return out


async def throughput(exchange: Exchange, size: int, repeats: int) -> float:
    payload = os.urandom(size)
    await exchange(payload, ACK)  # warm up
    t0 = time.perf_counter()
    for _ in range(repeats):
        await exchange(payload, ACK)
    return size * repeats / (time.perf_counter() - t0) / 1e6


def p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100)[98]


Row = tuple[str, float, float, float]  # metric, libp2p, lane, raw tcp
NAN = float("nan")


async def measure(info: dict[str, object], rounds: int) -> list[Row]:
    rows: list[Row] = []
    peer_id, maddr = str(info["peer_id"]), str(info["maddr"])
    async with P2PNode() as node:
        p2p, stream = await p2p_exchange(node, peer_id, maddr, lane=False)
        lane, lane_stream = await p2p_exchange(node, peer_id, maddr, lane=True)
        tcp, writer = await tcp_exchange(int(str(info["port"])))
        ways = (p2p, lane, tcp)
        for label, payload in (
            ("empty frame", b""),
            (f"{STEP_BYTES} B step", os.urandom(STEP_BYTES)),
            ("256 KB (32 bf16 rows)", os.urandom(256 * 1024)),
        ):
            a, b, c = [await rtts(way, payload, rounds) for way in ways]
            rows.append(
                (f"RTT {label}, median (ms)", *(statistics.median(x) * 1e3 for x in (a, b, c)))  # type: ignore[arg-type]
            )
            rows.append((f"RTT {label}, p99 (ms)", p99(a) * 1e3, p99(b) * 1e3, p99(c) * 1e3))
        for size, repeats in ((1 << 20, 20), (16 << 20, 4)):
            a_tp, b_tp, c_tp = [await throughput(way, size, repeats) for way in ways]
            rows.append((f"throughput {size >> 20} MB (MB/s)", a_tp, b_tp, c_tp))
        pings = [await node.ping(peer_id) for _ in range(rounds)]
        rows.append(("libp2p ping, median (ms)", statistics.median(pings) * 1e3, NAN, NAN))
        await stream.close()
        await lane_stream.close()
        writer.close()
    return rows


def render(rows: list[Row]) -> str:
    head = f"{'metric':<40} {'libp2p':>9} {'lane':>9} {'raw tcp':>9} {'libp2p/tcp':>10} {'lane/tcp':>9}"
    lines = [head, "-" * len(head)]
    for name, a, b, c in rows:
        cells = ["" if x != x else f"{x:.3f}" for x in (a, b, c)]  # x != x: NaN
        ratios = ["" if x != x or c != c else f"{x / c:.2f}x" for x in (a, b)]
        lines.append(
            f"{name:<40} {cells[0]:>9} {cells[1]:>9} {cells[2]:>9} {ratios[0]:>10} {ratios[1]:>9}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve())
        return 0
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        info = json.loads(child.stdout.readline())
        rows = asyncio.run(measure(info, args.rounds))
    finally:
        if child.stdin:
            child.stdin.close()
        child.wait(timeout=30)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "metric": n,
                        "libp2p": a,
                        "lane": None if b != b else b,
                        "tcp": None if c != c else c,
                    }
                    for n, a, b, c in rows
                ]
            )
        )
    else:
        print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
