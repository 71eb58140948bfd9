"""Shared fixtures: the real embedded models, converted once per test session."""

from __future__ import annotations

import pytest

from swarm.logs import quiet_third_party_logs
from swarm.models import Weights, load_weights

quiet_third_party_logs()


@pytest.fixture(scope="session")
def smollm2() -> Weights:
    return load_weights("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma3() -> Weights:
    return load_weights("gemma3-270m")
