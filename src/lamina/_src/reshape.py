"""Layers that pass values through unchanged or only change their shape."""

from __future__ import annotations

import jax.numpy as jnp

from lamina._src.layer import Layer, check_input_shape, layer_error, size


def Identity() -> Layer:
    """Returns its input unchanged; a placeholder, e.g. the skip side of a block."""
    name = "Identity()"

    def init(key, input_shape):
        return check_input_shape(name, input_shape), ()

    def apply(params, x, *, key=None):
        return x

    return Layer(init, apply, name)


def Flatten() -> Layer:
    """Flattens one example to a vector: shape `(h, w, ...)` becomes `(h * w * ...,)`.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> lm.Flatten().init(jax.random.key(0), (8, 8))[0]
      (64,)
    """
    name = "Flatten()"

    def init(key, input_shape):
        return (size(check_input_shape(name, input_shape, min_rank=1)),), ()

    def apply(params, x, *, key=None):
        x = jnp.asarray(x)
        if x.ndim == 0:
            raise layer_error(name, "expected an array with at least one axis, got a scalar")
        return jnp.reshape(x, (size(x.shape),))

    return Layer(init, apply, name)
