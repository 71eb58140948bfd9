"""`swarmgate gateway`: the OpenAI-compatible HTTP front door of a swarm."""

from __future__ import annotations

import argparse
import json

from gateway.server import GatewayConfig, run_gateway
from swarm import busy_poll, event_loop
from swarm.logs import setup_logging
from swarm.models import DEFAULT_MODEL


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    config = GatewayConfig(
        bootstrap=args.bootstrap,
        host=args.host,
        port=args.port,
        models=args.model or [DEFAULT_MODEL],
        redis_url=args.redis_url,
        api_keys=[args.api_key] if args.api_key else [],
        mixed_precision=args.mixed_precision,
        queue_timeout=args.queue_timeout,
        max_queued=args.max_queued,
        device=args.device,
        round_window=args.round_window_ms / 1000,
        lanes=args.lanes,
        push=args.push,
        round_groups=args.round_groups,
        rounds_in_flight=args.rounds_in_flight,
        stream_after_send=stream_after_send(args),
        head_graphs=args.head_graphs,
        head_inline=args.head_inline,
        compute_turns=args.compute_turns,
        busy_poll=busy_poll.wanted(args.busy_poll, args.device),
    )

    def ready(url: str) -> None:
        print(f"swarmgate gateway: serving {url}/v1")
        print("GATEWAY_READY " + json.dumps({"url": url}), flush=True)

    try:
        return event_loop.run(run_gateway(config, on_ready=ready))
    except KeyboardInterrupt:
        return 130


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("gateway", help="serve the OpenAI-compatible API over a swarm")
    parser.add_argument("--bootstrap", action="append", required=True, help="multiaddr of a peer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", action="append", help="model to serve (repeatable)")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--api-key", default=None)
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        help="allow chains that mix quantized and unquantized peers",
    )
    parser.add_argument(
        "--queue-timeout", type=float, default=10.0, help="seconds to wait for cache space"
    )
    parser.add_argument("--max-queued", type=int, default=64, help="requests waiting at most")
    parser.add_argument("--device", default="cpu", help="where the head runs (cpu, cuda)")
    add_head_graphs(parser)
    parser.add_argument(
        "--compute-turns",
        metavar="FILE",
        help="a file that every process computing on this machine's CPU cores names (give the "
        "peers on this machine the same): head passes and their compute take turns",
    )
    parser.add_argument(
        "--round-window-ms",
        type=float,
        default=5.0,
        help="how long a round to a peer waits for generations still on their way (batching)",
    )
    parser.add_argument(
        "--round-groups",
        type=int,
        default=1,
        help="split the generations decoding together into this many pipelined micro-batches "
        "(while one computes at a peer, the others are at the other peers)",
    )
    add_rounds_in_flight(parser)
    parser.add_argument(
        "--no-lanes",
        dest="lanes",
        action="store_false",
        help="talk to peers over libp2p streams only (no TCP + Noise lanes beside libp2p)",
    )
    parser.add_argument(
        "--push",
        action="store_true",
        help="peer-to-peer push: each peer sends its output straight to the next peer of the "
        "chain instead of back through the gateway (for a gateway far from its peers)",
    )
    add_stream_after_send(parser)
    parser.add_argument("--log-level", default=None)
    busy_poll.add_busy_poll_flag(parser)
    parser.set_defaults(func=run)


def add_head_graphs(parser: argparse.ArgumentParser) -> None:
    """`--[no-]head-graphs` and `--head-inline`, shared by `gateway` and `up`."""
    parser.add_argument(
        "--head-graphs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --device cuda, capture the greedy head pass as CUDA graphs at start and "
        "replay them (default on; no effect on a CPU)",
    )
    parser.add_argument(
        "--head-inline",
        action="store_true",
        help="run the head's passes on the event loop's thread instead of a thread of their "
        "own: no hand-offs per pass, but nothing else runs meanwhile (for a GPU head, whose "
        "passes are short; on a CPU the pass gets a single torch thread)",
    )


def add_stream_after_send(parser: argparse.ArgumentParser) -> None:
    """`--[no-]stream-after-send`, shared by `gateway` and `up` (see `stream_after_send`)."""
    parser.add_argument(
        "--stream-after-send",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write each token's chunk once the next step has left for the swarm (default: on "
        "with --device cuda, where the gateway has cores of its own; off on a CPU host, where "
        "the writes would compete with the peers' compute)",
    )


def stream_after_send(args: argparse.Namespace) -> bool:
    """The flag as given, else on for a GPU gateway (`Engine.stream_after_send`)."""
    chosen: bool | None = args.stream_after_send
    return str(args.device).startswith("cuda") if chosen is None else chosen


def add_rounds_in_flight(parser: argparse.ArgumentParser) -> None:
    """`--rounds-in-flight`, shared by `gateway` and `up`."""
    parser.add_argument(
        "--rounds-in-flight",
        type=int,
        default=None,
        help="rounds sent to a peer before its answer to the first is back (the peer pipelines "
        "them); default: one per round group",
    )
