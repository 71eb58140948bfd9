"""schemathesis against the committed contract on a live gateway over real peers: no 5xx, and
every 4xx in OpenAI's error shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.procs import Proc, start

ROOT = Path(__file__).resolve().parents[2]
schema = schemathesis.openapi.from_path(ROOT / "openapi" / "openapi.yaml")
pytestmark = pytest.mark.slow
MAX_TOKENS = 3  # we test the contract, not long generations


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    # the head inline on the loop (`--head-inline`): every kind of request the contract
    # allows runs through that path too (the other swarms of the suite use the head's thread)
    proc: Proc = start(["up", "--port", "0", "--peers", "2", "--head-inline"], "GATEWAY_READY ")
    try:
        yield str(proc.ready["url"])
    finally:
        proc.stop(timeout=60)


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_contract_holds(case: schemathesis.Case, gateway_url: str) -> None:
    if isinstance(case.body, dict):
        for field in ("max_tokens", "max_completion_tokens"):
            if isinstance(case.body.get(field), int):
                case.body[field] = max(1, min(case.body[field], MAX_TOKENS))
        if "max_tokens" not in case.body and "max_completion_tokens" not in case.body:
            case.body["max_tokens"] = MAX_TOKENS
    response = case.call(base_url=gateway_url, timeout=120)
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
