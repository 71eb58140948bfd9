"""The committed OpenAPI contract matches the app."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.openapi import OPENAPI_PATH, build_openapi

ROOT = Path(__file__).resolve().parents[2]


def test_committed_contract_matches_the_app() -> None:
    committed = yaml.safe_load((ROOT / OPENAPI_PATH).read_text())
    assert committed == build_openapi(), (
        "openapi/openapi.yaml is stale: run `python -m gateway.openapi > openapi/openapi.yaml`"
    )


def test_contract_names_the_openai_routes() -> None:
    paths = build_openapi()["paths"]
    for route in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/models/{model_id}",
        "/health",
        "/ready",
        "/v1/swarm",
    ):
        assert route in paths, route
