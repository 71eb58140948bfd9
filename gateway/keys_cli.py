"""`swarmgate keys add|list|revoke`: manage the API keys gateways check, in Redis."""

from __future__ import annotations

import argparse
import sys
import time

from gateway.keys import KeyAdmin


def run(args: argparse.Namespace) -> int:
    admin = KeyAdmin(args.redis_url)
    if args.action == "add":
        try:
            key = admin.add(args.name, rpm=args.rpm, tpm=args.tpm)
        except ValueError as error:
            print(f"swarmgate keys: {error}", file=sys.stderr)
            return 1
        print(key)
        print(
            f"(shown once: Redis keeps only its sha256) name={args.name} "
            f"rpm={args.rpm or '-'} tpm={args.tpm or '-'}",
            file=sys.stderr,
        )
        return 0
    if args.action == "list":
        print(f"{'name':24} {'digest':14} {'rpm':>6} {'tpm':>8} {'created':20} state")
        for info in admin.list():
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.created))
            state = "revoked" if info.revoked else "live"
            print(
                f"{info.name:24} {info.digest[:12]:14} {info.rpm or '-':>6} "
                f"{info.tpm or '-':>8} {created:20} {state}"
            )
        return 0
    revoked = admin.revoke(args.name)
    print(f"revoked {revoked} key(s) named {args.name!r}")
    return 0 if revoked else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("keys", help="manage API keys (in Redis)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    actions = parser.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create a key and print it once")
    add.add_argument("name")
    add.add_argument("--rpm", type=int, default=0, help="requests per minute (0: no limit)")
    add.add_argument("--tpm", type=int, default=0, help="tokens per minute (0: no limit)")
    actions.add_parser("list", help="list keys (names, limits; never the keys)")
    revoke = actions.add_parser("revoke", help="revoke every live key of a name")
    revoke.add_argument("name")
    parser.set_defaults(func=run)
