"""The `swarmgate` command line: one entry point, a subcommand per job.

Each subcommand lives in its own module exposing `register(subparsers)`, which adds its parser
and sets `func` (parsed namespace → exit code). Only the chosen subcommand's module is imported,
so a peer never pays for the gateway's imports and vice versa.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# subcommand → module that registers it, in the order `--help` lists them
SUBCOMMANDS: dict[str, str] = {
    "up": "gateway.up_cli",
    "peer": "peer.cli",
    "gateway": "gateway.cli",
    "swarm": "swarm.swarm_cli",
    "keys": "gateway.keys_cli",
    "generate": "swarm.generate_cli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarmgate", description="An OpenAI-compatible gateway to a peer-to-peer swarm."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, module_name in SUBCOMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module_name).register(subparsers)
    return parser


SWITCH_INTERVAL = 0.0005  # seconds


def main(argv: Sequence[str] | None = None) -> int:
    # Processes of a swarm share the cores and take turns along the chain. OpenMP threads that
    # spin long after each op would steal the next process's time; threads that sleep at once
    # pay a wake-up on every op (a decode step runs hundreds: 1.8x slower measured). A short
    # spin keeps the threads warm within a step and lets them sleep between steps. Not too
    # short: at 10000 (~0.6 ms of spinning after a parallel op here) a 15-block step that came
    # after an idle pause took 53-58 ms instead of 17-23 ms (every request's first step at an
    # idle swarm), while 20000-50000 kept it at 17-23 ms (docs/notes.md, session 11).
    # Must be set before torch loads.
    os.environ.setdefault("GOMP_SPINCOUNT", "30000")
    # Every process runs an asyncio thread and the libp2p (trio) thread, and hands each message
    # from one to the other. A thread that wants the GIL while the other computes waits up to
    # the switch interval (5 ms by default) on every hand-off: keep that wait short.
    sys.setswitchinterval(SWITCH_INTERVAL)
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    args = build_parser(chosen).parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
