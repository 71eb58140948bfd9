"""`swarmgate up --busy-poll on`: every process keeps its loop awake around the traffic, and the
answers are the same as without (real peers, lanes, the OpenAI SDK)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest

from tests.metrics_text import scrape, value
from tests.procs import Proc, start

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def up() -> Iterator[Proc]:
    proc = start(
        ["up", "--port", "0", "--peers", "2", "--busy-poll", "on", "--peer-metrics"],
        "GATEWAY_READY ",
    )
    try:
        yield proc
    finally:
        assert proc.stop(timeout=60) == 0, proc.output[-3000:]


def _busy_seconds(up: Proc) -> list[float]:
    """Seconds the gateway's loop, then each peer's, was kept awake so far."""
    gateway = value(scrape(f"{up.ready['url']}/metrics"), "swarmgate_busy_poll_seconds_total")
    peers = [
        value(scrape(str(url)), "swarmgate_peer_busy_poll_seconds_total")
        for url in up.ready["peer_metrics"]
    ]
    return [gateway, *peers]


def test_every_process_polls_around_a_request_and_answers_the_same(up: Proc) -> None:
    client = openai.OpenAI(base_url=f"{up.ready['url']}/v1", api_key="x", max_retries=0)
    model = str(up.ready["model"])
    time.sleep(0.2)  # the start-up's own messages' spells are over
    before = _busy_seconds(up)
    whole = client.chat.completions.create(
        model=model,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
    )
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=QUESTION,  # type: ignore[arg-type]
            max_tokens=12,
            temperature=0,
            stream=True,
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert streamed.strip()
    time.sleep(0.5)  # well past the last spell's window (50 ms)
    after = _busy_seconds(up)
    assert len(after) == 3
    # each process spun through its part of the requests' traffic, and stopped afterwards
    for was, now in zip(before, after, strict=True):
        assert now - was > 0.05
    settled = _busy_seconds(up)
    time.sleep(0.3)
    # scrapes are no lane traffic, nor API requests: every loop stays asleep
    assert _busy_seconds(up) == settled
