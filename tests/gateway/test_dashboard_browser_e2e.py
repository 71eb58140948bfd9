"""The dashboard in headless Chromium against `swarmgate up --peers 2`: the live map shows both
peers covering all 30 blocks, and the playground streams a reply token by token.

The browser is driven by `browser_check.mjs` (playwright-core from the repo's node_modules,
Debian's `chromium`); it reports what it saw as JSON and this test judges it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import Proc, start

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "gateway" / "browser_check.mjs"
QUESTION = "What is the capital of France?"
NUM_BLOCKS = 30  # smollm2-135m-instruct


def _chromium() -> str | None:
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (ROOT / "node_modules" / "playwright-core").is_dir():
        return "node_modules/playwright-core is missing (run `make test` or `npm install`)"
    if _chromium() is None:
        return "chromium is not installed (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def up() -> Iterator[Proc]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    proc = start(["up", "--port", "0", "--peers", "2"], "GATEWAY_READY ")
    try:
        yield proc
    finally:
        assert proc.stop(timeout=60) == 0, proc.output[-3000:]


def run_browser(args: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        ["node", str(SCRIPT), json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, f"rc={done.returncode}\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def test_dashboard_map_and_playground(up: Proc, tmp_path: Path) -> None:
    url = str(up.ready["url"])
    # the page and its event stream need no key and stay out of the OpenAPI contract
    page = httpx.get(f"{url}/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    swarm = httpx.get(f"{url}/v1/swarm", timeout=10).json()
    (model,) = [m for m in swarm["models"] if m["name"] == "smollm2-135m-instruct"]
    assert model["num_blocks"] == NUM_BLOCKS
    peers = [p["peer_id"] for p in model["peers"]]
    assert len(peers) == 2
    for peer in model["peers"]:  # live fields from each peer's `info`
        assert peer["status"] in ("online", "busy", "moving")
        assert peer["cache_tokens_total"] > 0 and peer["sessions"] is not None

    shot = tmp_path / "dashboard.png"
    result = run_browser(
        {
            "url": url,
            "peers": peers,
            "num_blocks": NUM_BLOCKS,
            "screenshot": str(shot),
            "question": QUESTION,
            "max_tokens": 32,
            "chromium": _chromium(),
        }
    )
    report = json.dumps(result, indent=1)
    assert result["ok"], report
    assert sorted(result["peers_in_text"]) == sorted(peers), report
    assert sum(result["blocks_per_peer"].values()) == NUM_BLOCKS, report
    assert result["blocks_covered"] == NUM_BLOCKS, report
    assert shot.stat().st_size > 10_000, report
    assert result["partials"] and len(set(result["partials"])) >= 2, report
    assert result["final"].strip(), report
    assert result["final"].startswith(result["partials"][0]), report
    assert not result["chat_errors"] and not result["page_errors"], report
    assert not result["foreign_requests"], report


def test_event_stream_pushes_and_ends_when_the_gateway_stops(up: Proc) -> None:
    """Runs last: the map arrives every ~2 s, and SIGTERM ends an open stream with exit 0."""
    url = str(up.ready["url"])
    with httpx.stream("GET", f"{url}/dashboard/events", timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        arrivals: list[float] = []
        for line in lines:
            if line.startswith("data:"):
                body = json.loads(line[5:])
                assert body["models"] and "auth_required" in body
                arrivals.append(time.monotonic())
                if len(arrivals) == 3:
                    break
        assert arrivals[-1] - arrivals[0] < 8, arrivals
        stopped = time.monotonic()
        assert up.stop(timeout=20) == 0, up.output[-3000:]
        assert time.monotonic() - stopped < 15
        rest = list(lines)  # the server ended the stream: iteration finishes
        assert all(not line.startswith("data:") or "models" in line for line in rest)
