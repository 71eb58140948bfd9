"""The published contract: `openapi/openapi.yaml` is generated from the app and checked in.

    python -m gateway.openapi > openapi/openapi.yaml

A test fails when the app and the committed file disagree.
"""

from __future__ import annotations

import sys
from typing import Any, cast

import yaml

from gateway.app import create_app
from gateway.engine import Engine

OPENAPI_PATH = "openapi/openapi.yaml"


def build_openapi() -> dict[str, Any]:
    """The app's OpenAPI document (building routes needs no live engine)."""
    schema: dict[str, Any] = create_app(cast(Engine, None)).openapi()
    return schema


def render() -> str:
    return yaml.safe_dump(build_openapi(), sort_keys=False, allow_unicode=True)


if __name__ == "__main__":
    sys.stdout.write(render())
