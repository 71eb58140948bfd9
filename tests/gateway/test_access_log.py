"""One access-log line per request, with its request id (also the `x-request-id` header)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.engine import Engine
from swarm import logs
from swarm.logs import ACCESS_LOGGER, JsonFormatter, setup_logging
from tests.metrics_text import value


class NoModels:
    def __init__(self) -> None:
        self.models: list[Any] = []

    def available(self, model: Any) -> bool:
        return False

    def find_model(self, name: str) -> None:
        return None


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == ACCESS_LOGGER]


@pytest.fixture
def client(caplog: pytest.LogCaptureFixture) -> TestClient:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    return TestClient(create_app(cast(Engine, NoModels()), api_keys=["sk-test"]))


def test_one_json_line_per_request_with_its_id(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    (line,) = access_lines(caplog)
    assert line["request_id"] == response.headers["x-request-id"]
    assert len(line["request_id"]) == 32
    assert line["logger"] == ACCESS_LOGGER and line["level"] == "info"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/health", 200)
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert "model" not in line and "completion_tokens" not in line  # unknown: left out
    client.get("/v1/models")
    client.get("/v1/models")
    assert len(access_lines(caplog)) == 3
    ids = {line["request_id"] for line in access_lines(caplog)}
    assert len(ids) == 3


def test_sane_incoming_ids_are_kept_others_replaced(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    kept = client.get("/health", headers={"x-request-id": "trace-42.a:b_c"})
    assert kept.headers["x-request-id"] == "trace-42.a:b_c"
    for bad in ("has spaces", "x" * 65, "semi;colon", ""):
        response = client.get("/health", headers={"x-request-id": bad})
        assert response.headers["x-request-id"] != bad
        assert len(response.headers["x-request-id"]) == 32
    lines = access_lines(caplog)
    assert len(lines) == 5 and lines[0]["request_id"] == "trace-42.a:b_c"


def test_errors_are_logged_with_their_status(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert client.get("/v1/models").status_code == 401  # no key
    assert client.get("/nowhere").status_code == 404
    body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": "Bearer sk-test"}
    assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 404
    statuses = [(line["path"], line["status"]) for line in access_lines(caplog)]
    assert statuses == [("/v1/models", 401), ("/nowhere", 404), ("/v1/chat/completions", 404)]


def test_metrics_are_open_and_count_requests_by_route(client: TestClient) -> None:
    client.get("/health")
    client.get("/v1/models")  # 401: no key
    client.get("/v1/models/some/thing", headers={"Authorization": "Bearer sk-test"})
    client.get("/nowhere")
    response = client.get("/metrics")  # no key needed
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    count = "swarmgate_http_requests_total"
    assert value(text, count, route="/health", method="GET", status="200") == 1
    assert value(text, count, route="unmatched", status="401") == 1  # rejected before routing
    assert value(text, count, route="/v1/models/{model_id:path}", status="404") == 1
    assert value(text, count, route="unmatched", status="404") == 1
    assert "/metrics" not in client.app.openapi()["paths"]  # type: ignore[attr-defined]


def test_two_apps_in_one_process_keep_separate_metrics() -> None:
    one = TestClient(create_app(cast(Engine, NoModels())))
    two = TestClient(create_app(cast(Engine, NoModels())))
    one.get("/health")
    one.get("/health")
    two.get("/health")
    count = "swarmgate_http_requests_total"
    assert value(one.get("/metrics").text, count, route="/health") == 2
    assert value(two.get("/metrics").text, count, route="/health") == 1


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, access = logging.getLogger(), logging.getLogger(ACCESS_LOGGER)
    saved = (root.handlers[:], root.level, access.level)
    try:
        yield
    finally:
        logs._stop_listener()
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        access.setLevel(saved[2])


def test_access_log_shows_by_default_while_the_rest_stays_quiet(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SWARMGATE_LOG_LEVEL", raising=False)
    setup_logging()
    assert logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)
    assert not logging.getLogger("swarmgate.gateway").isEnabledFor(logging.INFO)
    monkeypatch.setenv("SWARMGATE_LOG_LEVEL", "error")
    setup_logging()
    assert not logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.WARNING)
    setup_logging("debug")
    assert logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.DEBUG)


class ThreadRecordingStream(io.StringIO):
    """A stderr that remembers which threads wrote to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: set[str] = set()

    def write(self, text: str) -> int:
        self.writers.add(threading.current_thread().name)
        return super().write(text)

    def isatty(self) -> bool:
        return False


def test_records_are_written_by_a_thread_of_their_own_with_fields_and_traceback(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A logging call on the event loop never writes to stderr itself (a full pipe would
    stall the loop): the writer thread does, and the line keeps the message's arguments,
    the `extra` fields and the traceback."""
    stream = ThreadRecordingStream()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.delenv("SWARMGATE_LOG_LEVEL", raising=False)
    setup_logging()
    log = logging.getLogger("swarmgate.gateway")
    try:
        raise ValueError("boom")
    except ValueError:
        log.error("step %d failed", 7, exc_info=True, extra={"peer": "abc"})
    logs._stop_listener()  # what exit does: write what is queued
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["msg"] == "step 7 failed" and line["peer"] == "abc" and line["level"] == "error"
    assert "ValueError: boom" in line["exc"]
    assert threading.current_thread().name not in stream.writers


def test_first_token_time_is_taken_when_its_body_is_sent() -> None:
    """The body after `token_next` is the first token's: its time from the request's arrival
    is reported once (and only for the first token), and logged as `first_token_ms`."""
    from gateway.access import STATE_KEY, AccessLog, AccessRecord
    from gateway.engine import Usage

    seen: list[tuple[str, float]] = []
    records: list[AccessRecord] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        record: AccessRecord = scope["state"][STATE_KEY]
        records.append(record)
        record.note("m", Usage(), True)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"opening", "more_body": True})
        assert not seen  # no token yet
        await asyncio.sleep(0.02)
        record.token_next()
        await send({"type": "http.response.body", "body": b"token", "more_body": True})
        record.token_next()  # a later token: not a first one
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    middleware = AccessLog(app, on_first_token=lambda model, s: seen.append((model, s)))
    scope = {"type": "http", "method": "POST", "path": "/v1/x", "headers": []}
    asyncio.run(middleware(scope, receive, send))
    assert len(seen) == 1 and seen[0][0] == "m" and seen[0][1] >= 0.02
    assert records[0].first_token_seconds == seen[0][1]
