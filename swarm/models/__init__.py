"""Model sources, the converted-weights store, specs and content hashes."""

from swarm.models.registry import DEFAULT_MODEL, REGISTRY, UnknownModelError, load_weights
from swarm.models.spec import ModelSpec, spec_of
from swarm.models.weights import Weights

__all__ = [
    "DEFAULT_MODEL",
    "REGISTRY",
    "ModelSpec",
    "UnknownModelError",
    "Weights",
    "load_weights",
    "spec_of",
]
