"""How slowly an idle process answers, and what busy polling (`swarm.busy_poll`) changes.

Two processes on this repository's event loop (uvloop) exchange 200-byte messages over loopback
TCP, as a gateway and a peer exchange a lane's small frames. The client measures round trips
after idle gaps of 0, 1, 10 and 200 ms, once with both loops sleeping in epoll between
messages (`--busy-poll off`) and once with both busy-polling (`on`: each message keeps the loop
awake for `swarm.busy_poll.WINDOW`). The gateway's tokenizer on a short chat is timed after the
same gaps, to separate the cold caches' part of the cost from the wake-up's. The write column
is the client's `write` call alone: on loopback it runs the receiver's side of TCP and wakes
the receiver, so a sleeping receiver makes the sender's write slow too. Ratios: busy-polled
to sleeping round trips, and the tokenizer to its back-to-back time (gap 0), in the same run.
The busy poll's window is 50 ms: after the 200 ms gap both loops were asleep again. Prints a table; JSON in
$OUT/wake.json (default bench-out/).

    python bench/wake.py [--rounds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import write_json  # noqa: E402
from swarm import busy_poll, event_loop  # noqa: E402
from swarm.models import DEFAULT_MODEL, load_weights  # noqa: E402

GAPS = (0.0, 0.001, 0.01, 0.2)
MESSAGE = 200


def _no_delay(writer: asyncio.StreamWriter) -> None:
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _echo(ports: Any, busy: bool) -> None:
    """The answering process: echoes each message, poking the busy poll like a lane does."""

    async def main() -> None:
        if busy:
            busy_poll.enable()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            _no_delay(writer)
            while True:
                try:
                    data = await reader.readexactly(MESSAGE)
                except asyncio.IncompleteReadError:
                    return
                busy_poll.poke()
                writer.write(data)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        ports.put(server.sockets[0].getsockname()[1])
        await asyncio.sleep(3600)

    event_loop.run(main())


async def _round_trips(port: int, busy: bool, rounds: int) -> dict[str, dict[float, float]]:
    """Median round trip in µs after each idle gap, and the median time of its write (a
    loopback write runs the receiver's side of TCP and wakes the receiver if it sleeps)."""
    if busy:
        busy_poll.enable()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _no_delay(writer)
    medians: dict[str, dict[float, float]] = {"rtt": {}, "write": {}}
    try:
        for gap in GAPS:
            times, writes = [], []
            for _ in range(rounds):
                await asyncio.sleep(gap)
                busy_poll.poke()
                began = time.perf_counter()
                writer.write(b"x" * MESSAGE)
                writes.append((time.perf_counter() - began) * 1e6)
                await reader.readexactly(MESSAGE)
                times.append((time.perf_counter() - began) * 1e6)
            medians["rtt"][gap] = statistics.median(times)
            medians["write"][gap] = statistics.median(writes)
    finally:
        writer.close()
        busy_poll.disable()
    return medians


def round_trips(busy: bool, rounds: int) -> dict[str, dict[float, float]]:
    ports: Any = mp.get_context("spawn").Queue()
    echo = mp.get_context("spawn").Process(target=_echo, args=(ports, busy), daemon=True)
    echo.start()
    try:
        port = ports.get(timeout=60)
        return event_loop.run(_round_trips(port, busy, rounds))
    finally:
        echo.kill()
        echo.join(10)


def tokenize_times(rounds: int) -> dict[float, float]:
    """Median µs to render and encode a one-question chat after each idle gap (the model's
    tokenizer: `WAKE_MODEL`, default the embedded model)."""
    tokenizer = load_weights(os.environ.get("WAKE_MODEL", DEFAULT_MODEL)).tokenizer()
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    medians = {}
    for gap in GAPS:
        times = []
        for _ in range(rounds):
            time.sleep(gap)
            began = time.perf_counter()
            text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            tokenizer.encode(str(text), add_special_tokens=False)
            times.append((time.perf_counter() - began) * 1e6)
        medians[gap] = statistics.median(times)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    sleeping, busy = round_trips(False, args.rounds), round_trips(True, args.rounds)
    tokenize = tokenize_times(args.rounds)
    result = {
        "sleeping_rtt_us": sleeping["rtt"],
        "busy_rtt_us": busy["rtt"],
        "sleeping_write_us": sleeping["write"],
        "busy_write_us": busy["write"],
        "tokenize_us": tokenize,
    }
    print(
        f"\n{'idle gap':>9} {'RTT sleeping':>13} {'RTT busy-polled':>16} {'busy/sleeping':>14}"
        f" {'write sleeping':>15} {'write busy':>11} {'tokenize':>18}"
    )
    for gap in GAPS:
        rtt_s, rtt_b = sleeping["rtt"][gap], busy["rtt"][gap]
        print(
            f"{gap * 1e3:>6.0f} ms {rtt_s:>10.1f} µs {rtt_b:>13.1f} µs {rtt_b / rtt_s:>13.2f}x"
            f" {sleeping['write'][gap]:>12.1f} µs {busy['write'][gap]:>8.1f} µs"
            f" {tokenize[gap]:>9.1f} µs {tokenize[gap] / tokenize[0.0]:>5.2f}x"
        )
    write_json("wake", result)


if __name__ == "__main__":
    main()
