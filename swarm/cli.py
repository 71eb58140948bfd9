"""The `swarmgate` command line: one entry point, a subcommand per job.

Each subcommand lives in its own module and exposes `register(subparsers)`, which adds its
parser and sets `func` to a callable taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# modules that contribute subcommands, in the order `--help` lists them
SUBCOMMAND_MODULES: tuple[str, ...] = ("swarm.generate_cli", "swarm.swarm_cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swarmgate", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
