"""Conformance checks for layers: `check_layer` and `parametrize`."""

from lamina._src.testing.check import (  # noqa: F401
    PROPERTIES,
    LayerCheckError,
    check_layer,
    parametrize,
)

__all__ = ["PROPERTIES", "LayerCheckError", "check_layer", "parametrize"]
