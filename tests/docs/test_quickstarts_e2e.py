"""docs/quickstart.md, run as written: every `python`, `javascript` and `bash` block against one
`swarmgate up` (real peers, real libp2p), each in its own process with the official clients.

The gateway runs with an API key. Every snippet runs twice: with `OPENAI_API_KEY` set to that key
it must exit 0 and answer the France question with "Paris"; with a wrong key it must fail. The
pair proves each snippet takes its base URL and key from the environment (a snippet that ignored
`OPENAI_BASE_URL` would reach 127.0.0.1:8000, where there is nothing or someone else's gateway).
`sh` blocks are setup steps for the reader (installs, `make up`) and are not run.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.procs import Proc, start

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "docs" / "quickstart.md"
RUN_LANGUAGES = ("python", "javascript", "bash")
# what the page documents; deleting (or adding) a snippet must show up here
EXPECTED_COUNTS = {"python": 4, "javascript": 1, "bash": 2}
KEY = "sk-quickstart-" + secrets.token_hex(8)
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Snippet:
    language: str
    index: int  # 1-based among snippets of its language
    line: int  # line of the opening fence in the page
    code: str

    @property
    def name(self) -> str:
        return f"{self.language}-{self.index}"


def extract(markdown: str) -> list[Snippet]:
    """Top-level fenced blocks in page order (no nesting in our docs)."""
    snippets: list[Snippet] = []
    seen: dict[str, int] = {}
    for match in FENCE.finditer(markdown):
        language = match.group(1).lower()
        language = {"js": "javascript", "mjs": "javascript", "py": "python"}.get(language, language)
        seen[language] = seen.get(language, 0) + 1
        line = markdown.count("\n", 0, match.start()) + 1
        snippets.append(Snippet(language, seen[language], line, match.group(2)))
    return snippets


SNIPPETS = [s for s in extract(QUICKSTART.read_text()) if s.language in RUN_LANGUAGES]


def test_extract_finds_blocks_in_order() -> None:
    page = "x\n```python\nprint(1)\n```\n\n```sh\nmake up\n```\n```bash\necho a\n```\n"
    found = [(s.language, s.index, s.line, s.code) for s in extract(page)]
    assert found == [
        ("python", 1, 2, "print(1)\n"),
        ("sh", 1, 6, "make up\n"),
        ("bash", 1, 9, "echo a\n"),
    ]


def test_quickstart_has_every_snippet() -> None:
    counts = {lang: sum(s.language == lang for s in SNIPPETS) for lang in RUN_LANGUAGES}
    assert counts == EXPECTED_COUNTS
    page = QUICKSTART.read_text()
    for needle in ("openai", "langchain_openai", "ChatOpenAI", 'from "openai"', "curl", "-N"):
        assert needle in page


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    proc: Proc = start(["up", "--port", "0", "--peers", "2", "--api-key", KEY], "GATEWAY_READY ")
    try:
        yield f"{proc.ready['url']}/v1"
    finally:
        assert proc.stop(timeout=60) == 0, proc.output[-3000:]


def run_snippet(snippet: Snippet, base_url: str, key: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": key,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    if snippet.language == "python":
        return subprocess.run(
            [sys.executable, "-c", snippet.code],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    if snippet.language == "bash":
        return subprocess.run(
            ["bash", "-e", "-c", snippet.code],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    # an ES module inside the repo, so `import OpenAI from "openai"` resolves from node_modules
    fd, path = tempfile.mkstemp(prefix=".quickstart-", suffix=".mjs", dir=ROOT)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(snippet.code)
        return subprocess.run(
            ["node", path], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
        )
    finally:
        os.unlink(path)


@pytest.mark.slow
@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.name for s in SNIPPETS])
def test_snippet_runs_as_written(snippet: Snippet, base_url: str) -> None:
    where = f"{snippet.name} (docs/quickstart.md line {snippet.line})"
    done = run_snippet(snippet, base_url, KEY)
    assert done.returncode == 0, f"{where} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert "Paris" in done.stdout, f"{where} printed:\n{done.stdout}\n{done.stderr}"
    if snippet.language == "bash" and "-N" in snippet.code:
        events = [line for line in done.stdout.splitlines() if line.startswith("data: ")]
        assert len(events) > 2 and events[-1] == "data: [DONE]", done.stdout

    refused = run_snippet(snippet, base_url, "sk-wrong-" + secrets.token_hex(8))
    assert refused.returncode != 0, f"{where} succeeded with a wrong key:\n{refused.stdout}"
    assert "Paris" not in refused.stdout
