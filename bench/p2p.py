"""Cross-process p2p benchmark: RTT on a kept-open stream and throughput, against a baseline.

    .venv/bin/python bench/p2p.py [--rounds 500] [--json]

A child process serves an echo/ack protocol twice: over swarmgate's p2p layer (libp2p with
Noise + Yamux, framed by swarm.wire, behind the trio thread) and over a raw loopback TCP socket
with a 5-byte length/mode prefix. The parent measures both in the same run, so the figures are
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

from swarm.p2p import FrameStream, P2PNode

PROTOCOL = "/swarmgate/bench/1"
ECHO, ACK = 0, 1
TCP_HEAD = struct.Struct(">IB")
STEP_BYTES = 576 * 4  # one decode step of SmolLM2's hidden state in fp32


# ------------------------------------------------------------------------------ server side


async def serve() -> None:
    async def handler(stream: FrameStream) -> None:
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


# ------------------------------------------------------------------------------ client side

Exchange = Callable[[bytes, int], Awaitable[None]]


async def p2p_exchange(node: P2PNode, peer_id: str, maddr: str) -> tuple[Exchange, FrameStream]:
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


async def measure(info: dict[str, object], rounds: int) -> list[tuple[str, float, float, str]]:
    rows: list[tuple[str, float, float, str]] = []
    async with P2PNode() as node:
        p2p, stream = await p2p_exchange(node, str(info["peer_id"]), str(info["maddr"]))
        tcp, writer = await tcp_exchange(int(str(info["port"])))
        for label, payload in (
            ("empty frame", b""),
            (f"{STEP_BYTES} B step", os.urandom(STEP_BYTES)),
        ):
            a, b = await rtts(p2p, payload, rounds), await rtts(tcp, payload, rounds)
            rows.append(
                (
                    f"RTT {label}, median (ms)",
                    statistics.median(a) * 1e3,
                    statistics.median(b) * 1e3,
                    "lower",
                )
            )
            rows.append((f"RTT {label}, p99 (ms)", p99(a) * 1e3, p99(b) * 1e3, "lower"))
        for size, repeats in ((1 << 20, 20), (16 << 20, 4)):
            a_tp, b_tp = await throughput(p2p, size, repeats), await throughput(tcp, size, repeats)
            rows.append((f"throughput {size >> 20} MB (MB/s)", a_tp, b_tp, "higher"))
        pings = [await node.ping(str(info["peer_id"])) for _ in range(rounds)]
        rows.append(
            ("own ping, median (ms)", statistics.median(pings) * 1e3, float("nan"), "lower")
        )
        await stream.close()
        writer.close()
    return rows


def render(rows: list[tuple[str, float, float, str]]) -> str:
    lines = [f"{'metric':<34} {'p2p':>10} {'raw tcp':>10} {'p2p/tcp':>9}", "-" * 66]
    for name, a, b, _better in rows:
        ratio = "" if b != b else f"{a / b:>8.2f}x"  # b != b: NaN, no baseline
        base = "" if b != b else f"{b:>10.3f}"
        lines.append(f"{name:<34} {a:>10.3f} {base:>10} {ratio:>9}")
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
                [{"metric": n, "p2p": a, "tcp": None if b != b else b} for n, a, b, _ in rows]
            )
        )
    else:
        print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
