"""`swarmgate up`: a whole local swarm and its gateway on loopback, in one command.

Starts N peer processes that together cover the model (even split, the first one is the
bootstrap), then the gateway in this process; waits until `/ready`; prints the base URL and a
curl example. Ctrl-C (or SIGTERM) stops the gateway and then every peer cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.cli import (
    add_head_graphs,
    add_rounds_in_flight,
    add_stream_after_send,
    stream_after_send,
)
from gateway.server import GatewayConfig, run_gateway
from swarm import busy_poll, event_loop
from swarm.generate_cli import even_bounds
from swarm.logs import quiet_third_party_logs, setup_logging
from swarm.main_thread import add_compute_flag
from swarm.models import DEFAULT_MODEL, load_weights

PEER_READY = "PEER_READY "


def _spawn_peer(
    model: str, start: int, end: int, bootstrap: str | None, extra: list[str], workdir: Path
) -> subprocess.Popen[str]:
    args = [
        sys.executable,
        "-m",
        "swarm.cli",
        "peer",
        "--model",
        model,
        "--blocks",
        f"{start}:{end}",
        *extra,
    ]
    if bootstrap:
        args += ["--bootstrap", bootstrap]
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=None, text=True, cwd=workdir, start_new_session=True
    )


def _wait_ready(proc: subprocess.Popen[str], timeout: float = 600.0) -> dict[str, object]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if line.startswith(PEER_READY):
            ready: dict[str, object] = json.loads(line[len(PEER_READY) :])
            return ready
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"peer exited before it was ready (code {proc.poll()})")


def _stop_peers(peers: list[subprocess.Popen[str]]) -> None:
    for proc in peers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in peers:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    quiet_third_party_logs()
    print(f"swarmgate up: preparing {args.model} (first run converts the weights once)", flush=True)
    weights = load_weights(args.model)
    bounds = even_bounds(weights.num_blocks, args.peers)
    peers: list[subprocess.Popen[str]] = []
    workdir = Path(tempfile.mkdtemp(prefix="swarmgate-up-"))
    extra = ["--dtype", args.dtype, "--device", args.device]
    extra += ["--metrics-port", "0"] if args.peer_metrics else []
    extra += [] if args.lanes else ["--no-lanes"]
    extra += [] if args.compile else ["--no-compile"]
    extra += [] if args.pack else ["--no-pack"]
    extra += ["--compute", args.compute, "--busy-poll", args.busy_poll]
    # the peers and the head share this machine's cores: on a CPU they compute in turns
    turns = str(workdir / "compute.turns") if args.compute_turns and args.device == "cpu" else None
    if turns:
        Path(turns).touch()  # one file, made before any process opens it
        extra += ["--compute-turns", turns]
    try:
        bootstrap: str | None = None
        print(
            f"swarmgate up: starting {args.peers} peers: "
            + ", ".join(f"[{a}, {b})" for a, b in bounds),
            flush=True,
        )
        first = _spawn_peer(args.model, *bounds[0], None, extra, workdir)
        peers.append(first)
        ready = _wait_ready(first)
        peer_metrics = [ready.get("metrics_url")]
        bootstrap = str(ready["maddrs"][0])  # type: ignore[index]
        for start, end in bounds[1:]:
            peers.append(_spawn_peer(args.model, start, end, bootstrap, extra, workdir))
        for proc in peers[1:]:
            peer_metrics.append(_wait_ready(proc).get("metrics_url"))
        config = GatewayConfig(
            bootstrap=[bootstrap],
            host=args.host,
            port=args.port,
            models=[args.model],
            redis_url=args.redis_url,
            api_keys=[args.api_key] if args.api_key else [],
            device=args.device,
            round_window=args.round_window_ms / 1000,
            lanes=args.lanes,
            push=args.push,
            round_groups=args.round_groups or (2 if args.device.startswith("cuda") else 1),
            stream_after_send=stream_after_send(args),
            rounds_in_flight=args.rounds_in_flight,
            head_graphs=args.head_graphs,
            head_inline=args.head_inline,
            compute_turns=turns,
            busy_poll=busy_poll.wanted(args.busy_poll, args.device),
        )

        def announce(url: str) -> None:
            print(f"\nswarmgate is up: {url}/v1  (dashboard-free for now; Ctrl-C stops everything)")
            print("try:")
            print(
                f"  curl -N {url}/v1/chat/completions -H 'Content-Type: application/json' "
                f'-d \'{{"model": "{weights.name}", "stream": true, '
                '"messages": [{"role": "user", "content": "What is the capital of France?"}]}\''
            )
            line: dict[str, object] = {"url": url, "model": weights.name}
            if args.peer_metrics:
                print("peer metrics: " + " ".join(str(u) for u in peer_metrics))
                line["peer_metrics"] = peer_metrics
            print("GATEWAY_READY " + json.dumps(line), flush=True)

        return event_loop.run(run_gateway(config, on_ready=announce))
    except KeyboardInterrupt:
        return 130
    finally:
        _stop_peers(peers)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="start a local swarm and the gateway (the main job)")
    parser.add_argument("--peers", type=int, default=int(os.environ.get("SWARMGATE_PEERS", "2")))
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu", help="device of the peers and the head")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--api-key", default=None)
    parser.add_argument(
        "--peer-metrics",
        action="store_true",
        help="peers serve Prometheus metrics on 127.0.0.1 (URLs printed when up)",
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
        default=None,
        help="split the generations decoding together into this many pipelined micro-batches "
        "(while one computes at a peer, the others are at the other peers); "
        "default 2 with --device cuda, else 1",
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
    add_head_graphs(parser)
    parser.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="on CUDA, the peers run their layers eagerly (no torch.compile of fused parts)",
    )
    parser.add_argument(
        "--no-pack",
        dest="pack",
        action="store_false",
        help="on a CPU in float32, the peers keep a Llama-family span's weights in PyTorch's "
        "layout (MKL) instead of oneDNN's packed one",
    )
    parser.add_argument(
        "--no-compute-turns",
        dest="compute_turns",
        action="store_false",
        help="on a CPU, let the peers and the head compute at the same time on the machine's "
        "cores (default: one at a time, see swarm/compute_turns.py)",
    )
    add_compute_flag(parser)
    busy_poll.add_busy_poll_flag(parser)
    parser.add_argument("--log-level", default=None)
    parser.set_defaults(func=run)
