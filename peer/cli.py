"""`swarmgate peer`: run a peer that serves a span of a model's blocks to the swarm."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from peer.quant import QUANT_MODES
from peer.server import PeerConfig, PeerServer
from swarm import busy_poll, trace
from swarm.logs import setup_logging
from swarm.main_thread import (
    MainThreadExecutor,
    add_compute_flag,
    compute_mode,
    on_signal,
    run_async_inline,
    run_async_with_compute,
)
from swarm.models import DEFAULT_MODEL


def parse_blocks(text: str) -> tuple[int, int]:
    start_text, sep, end_text = text.partition(":")
    try:
        start, end = int(start_text), int(end_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--blocks takes START:END, not {text!r}") from None
    if not sep or not 0 <= start < end:
        raise argparse.ArgumentTypeError(f"--blocks takes START:END with START < END, not {text!r}")
    return start, end


async def serve(config: PeerConfig, compute: MainThreadExecutor) -> int:
    server = PeerServer(config, compute)
    stop = asyncio.Event()
    on_signal(compute, stop.set)
    try:
        await server.start()
        state = server.state
        assert state is not None
        maddrs = server.listen_maddrs
        print(f"swarmgate peer: serving blocks [{state.start}, {state.end}) of {state.model_name}")
        for maddr in maddrs:
            print(f"  listening on {maddr}")
        ready = {"peer_id": state.peer_id, "maddrs": maddrs, "start": state.start, "end": state.end}
        if server.metrics is not None:
            print(f"  metrics on {server.metrics.url}")
            ready["metrics_url"] = server.metrics.url
        trace.mark("peer.id", state.peer_id)  # which peer a trace file belongs to
        print("PEER_READY " + json.dumps(ready), flush=True)
        await stop.wait()
    finally:
        await server.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    trace.start("peer")
    config = PeerConfig(
        model=args.model,
        blocks=args.blocks,
        num_blocks=args.num_blocks,
        bootstrap=args.bootstrap or [],
        listen=[args.listen],
        announce=args.announce,
        device=args.device,
        dtype=args.dtype,
        quant=args.quant,
        cache_tokens=args.cache_tokens,
        identity=args.identity,
        rebalance_period=args.rebalance_period,
        join_jitter=args.join_jitter,
        metrics_port=args.metrics_port,
        lanes=args.lanes,
        push=args.push,
        lane_port=args.lane_port,
        compile=args.compile,
        pack=args.pack,
        compute_turns=args.compute_turns,
        batch_window=None if args.batch_window_ms is None else args.batch_window_ms / 1000,
        busy_poll=busy_poll.wanted(args.busy_poll, args.device),
    )
    inline = compute_mode(args.compute, args.device) == "inline"
    runner = run_async_inline if inline else run_async_with_compute
    try:
        return runner(lambda compute: serve(config, compute))
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        print(f"swarmgate peer: {error}", file=sys.stderr)
        return 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("peer", help="serve a span of a model's blocks to the swarm")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--blocks", type=parse_blocks, help="serve blocks START:END (end exclusive)")
    group.add_argument("--num-blocks", type=int, help="serve N blocks where the swarm is weakest")
    parser.add_argument("--bootstrap", action="append", help="multiaddr of a swarm member")
    parser.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    parser.add_argument("--announce", action="append", help="address to publish (multi-machine)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"]
    )
    parser.add_argument("--quant", default="none", choices=list(QUANT_MODES))
    parser.add_argument("--cache-tokens", type=int, help="KV-cache budget in tokens")
    parser.add_argument("--identity", type=Path, help="Ed25519 identity file (kept peer id)")
    parser.add_argument("--rebalance-period", type=float, default=180.0, help="seconds")
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=None,
        help="how long a decode step waits for other sessions' steps to batch with "
        "(0: never; default 8 on a CPU, 2 on a GPU)",
    )
    parser.add_argument("--join-jitter", type=float, default=2.0, help="seconds")
    parser.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT (0: any)"
    )
    parser.add_argument(
        "--no-lanes",
        dest="lanes",
        action="store_false",
        help="serve sessions over libp2p streams only (no TCP + Noise lanes beside libp2p)",
    )
    parser.add_argument(
        "--no-push",
        dest="push",
        action="store_false",
        help="never send step outputs straight to the next peer (clients then relay them)",
    )
    parser.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="on CUDA, run the layers eagerly (no torch.compile of their fused parts)",
    )
    parser.add_argument(
        "--no-pack",
        dest="pack",
        action="store_false",
        help="on a CPU in float32, keep a Llama-family span's weights in PyTorch's layout (MKL) "
        "instead of oneDNN's packed one",
    )
    parser.add_argument(
        "--compute-turns",
        metavar="FILE",
        help="a file that every process computing on this machine's CPU cores names: they "
        "compute one at a time instead of all at once (swarmgate up passes one to its peers "
        "and gateway)",
    )
    parser.add_argument(
        "--lane-port", type=int, default=0, help="TCP port for lanes, on --listen's host (0: any)"
    )
    add_compute_flag(parser)
    busy_poll.add_busy_poll_flag(parser)
    parser.add_argument("--log-level", default=None)
    parser.set_defaults(func=run)
