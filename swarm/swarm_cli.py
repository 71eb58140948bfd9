"""`swarmgate swarm`: print the swarm map (models, block coverage, peers, spans, speed, RTT).

Joins the swarm as a DHT client through the given bootstrap peers, refreshes a `SwarmView`
once, prints it (a table, or JSON with `--json`) and leaves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from swarm.p2p import P2PNode
from swarm.records import register_validators
from swarm.swarm_view import SwarmSnapshot, SwarmView
from swarm.wire import WireError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("swarm", help="print the swarm map", description=__doc__)
    p.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        metavar="MADDR",
        help="a swarm peer's full address (/ip4/.../tcp/N/p2p/<id>); repeatable",
    )
    p.add_argument("--model", action="append", default=None, metavar="HASH", help="only this model")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-ping", action="store_true", help="skip RTT measurement")
    p.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.bootstrap:
        print("swarmgate swarm: at least one --bootstrap address is needed", file=sys.stderr)
        return 2
    try:
        snapshot = asyncio.run(
            asyncio.wait_for(
                collect(args.bootstrap, args.model, not args.no_ping), timeout=args.timeout
            )
        )
    except (WireError, TimeoutError) as e:
        print(f"swarmgate swarm: {e or 'timed out'}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(snapshot.to_json(), indent=2))
    else:
        print(render(snapshot))
    return 0


async def collect(bootstrap: list[str], models: list[str] | None, ping: bool) -> SwarmSnapshot:
    node = P2PNode(bootstrap=bootstrap, dht_mode="client")
    register_validators(node)
    await node.start()
    try:
        if not await node.connected_peers():
            raise WireError("unavailable", "no bootstrap peer reachable")
        return await SwarmView(node, ping=ping).refresh(models)
    finally:
        await node.stop()


def _bar(coverage: list[int]) -> str:
    marks = "".join("." if c == 0 else str(c) if c < 10 else "+" for c in coverage)
    return marks or "-"


def render(snapshot: SwarmSnapshot) -> str:
    data = snapshot.to_json()
    if not data["models"]:
        return "no models found in the swarm"
    lines: list[str] = []
    for m in data["models"]:
        name = m["name"] or "(no model record)"
        state = "complete" if m["complete"] else "INCOMPLETE"
        lines.append(f"model {name}  {m['model_hash'][:16]}  blocks={m['num_blocks']}  {state}")
        lines.append(f"  coverage  {_bar(m['coverage'])}")
        lines.append(
            f"  {'peer':<16} {'span':>9} {'dtype':<9} {'dec tok/s':>9} {'pre tok/s':>9} "
            f"{'cache':>7} {'queue':>5} {'rtt ms':>8}"
        )
        for p in m["peers"]:
            rtt = (
                "down"
                if not p["reachable"]
                else "-"
                if p["rtt_ms"] is None
                else f"{p['rtt_ms']:.2f}"
            )
            span = f"{p['start']}-{p['end']}"
            lines.append(
                f"  {'…' + p['peer_id'][-14:]:<16} {span:>9} {p['dtype']:<9} "
                f"{p['throughput_decode']:>9.1f} {p['throughput_prefill']:>9.1f} "
                f"{p['cache_tokens_free']:>7} {p['queue_len']:>5} {rtt:>8}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m swarm.swarm_cli ...`: the same command without the other subcommands."""
    parser = argparse.ArgumentParser(prog="swarmgate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["swarm", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
