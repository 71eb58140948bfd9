"""Every `swarmgate` flag the docs mention exists: commands in docs/deploy.md and
docs/quickstart.md are checked against the real argument parsers, per subcommand."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from swarm.cli import SUBCOMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "docs" / "deploy.md", ROOT / "docs" / "quickstart.md"]
SUB = "|".join(SUBCOMMANDS)
# `swarmgate peer …`, `swarmgate:cuda peer …` (docker run), `compose run … gateway keys …`
COMMAND = re.compile(rf"\bswarmgate(?::[\w.-]+)?\s+({SUB})\b([^\n]*)")
COMPOSE = re.compile(rf'\["({SUB})",([^\]]*)\]', re.DOTALL)
# flags of the other tools the docs use (docker, compose, redis, pip, curl, grep)
OTHER_TOOLS = {
    "--build-arg", "--gpus", "--name", "--restart", "--rm", "--requirepass", "--appendonly",
    "--no-deps", "--fail-with-body",
}  # fmt: skip


def options(parser: argparse.ArgumentParser) -> set[str]:
    """Option strings of a parser and of its nested subcommands (`keys add --rpm`)."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= options(sub)
    return found


@pytest.fixture(scope="module")
def flags() -> dict[str, set[str]]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: options(sub) for name, sub in subparsers.choices.items()}


def logical_text(path: Path) -> str:
    return re.sub(r"\\\n\s*", " ", path.read_text())


def mentions(text: str) -> list[tuple[str, str]]:
    """(subcommand, flag) for every flag written after a swarmgate subcommand."""
    found = []
    for match in [*COMMAND.finditer(text), *COMPOSE.finditer(text)]:
        command, rest = match.group(1), match.group(2).split("#")[0]
        found += [(command, flag) for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", rest)]
    return found


def test_mentions_parses_each_form() -> None:
    text = (
        "swarmgate:cuda peer --num-blocks 15 --device cuda  # --comment\n"
        'command: ["gateway", "--host",\n "0.0.0.0", "--redis-url", "x"]\n'
        "docker run --rm swarmgate keys --redis-url u add a --rpm 1\n"
    )
    assert mentions(text) == [
        ("peer", "--num-blocks"),
        ("peer", "--device"),
        ("keys", "--redis-url"),
        ("keys", "--rpm"),
        ("gateway", "--host"),
        ("gateway", "--redis-url"),
    ]


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_flag_after_a_subcommand_exists(doc: Path, flags: dict[str, set[str]]) -> None:
    text = logical_text(doc)
    used = mentions(text)
    if doc.name == "deploy.md":
        assert {c for c, _ in used} >= {"peer", "gateway", "keys", "swarm"}
    unknown = sorted({(c, f) for c, f in used if f not in flags[c]})
    assert not unknown, f"{doc.name} mentions flags the CLI does not have: {unknown}"


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_flag_in_the_page_belongs_to_some_tool(doc: Path, flags: dict[str, set[str]]) -> None:
    known = set().union(*flags.values()) | OTHER_TOOLS
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", doc.read_text()))
    assert not mentioned - known, f"{doc.name}: unknown flags {sorted(mentioned - known)}"
