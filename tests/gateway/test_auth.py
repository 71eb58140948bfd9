"""API keys guard `/v1/*` (constant-time check); health and readiness stay open."""

from __future__ import annotations

from typing import Any, cast

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.engine import Engine


class NoModels:
    def __init__(self) -> None:
        self.models: list[Any] = []

    def available(self, model: Any) -> bool:
        return False


def client(keys: list[str]) -> TestClient:
    return TestClient(create_app(cast(Engine, NoModels()), api_keys=keys))


def test_keys_are_required_on_v1_only() -> None:
    c = client(["sk-one", "sk-two"])
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic sk-one"}):
        response = c.get("/v1/models", headers=headers)
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] and "message" in error
    for key in ("sk-one", "sk-two"):
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert c.get("/health").status_code == 200


def test_keys_are_required_behind_a_root_path() -> None:
    """Behind a proxy (`--root-path /api`) `/api/v1/*` is routed as `/v1/*`: it needs a key."""
    app = create_app(cast(Engine, NoModels()), api_keys=["sk-one"])
    c = TestClient(app, root_path="/api")
    assert c.get("/api/v1/models").status_code == 401
    assert c.get("/v1/models").status_code == 401
    key = {"Authorization": "Bearer sk-one"}
    assert c.get("/api/v1/models", headers=key).status_code == 200
    assert c.get("/api/health").status_code == 200


def test_no_keys_means_open() -> None:
    assert client([]).get("/v1/models").status_code == 200
