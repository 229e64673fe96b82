"""Layers that pass values through unchanged or only change their shape."""

from __future__ import annotations

import jax.numpy as jnp

from lamina._src.core.builtin import Builtin
from lamina._src.core.checks import size
from lamina._src.core.errors import layer_error


class Identity(Builtin):
    """Returns its input unchanged; a placeholder, e.g. the skip side of a block.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.serial(lm.Identity(), lm.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> params[0], model.apply(params, jnp.ones(3)).shape
      ((), (2,))
    """

    name = "Identity()"
    stochastic = False
    batch_polymorphic = True

    def forward(self, params, state, x, *, key, train):
        return x, state


class Flatten(Builtin):
    """Flattens one example to a vector: shape `(h, w, ...)` becomes `(h * w * ...,)`.

    Flattening is row-major, as `torch.nn.Flatten` on a channels-first
    example, so a `Dense` after it takes torch's `nn.Linear` weights as they are.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> lm.Flatten().init(jax.random.key(0), (8, 8))[0]
      (64,)
    """

    name = "Flatten()"
    min_rank = 1
    stochastic = False

    def output_shape(self, input_shape):
        return (size(input_shape),)

    def check_input(self, x, params):
        x = jnp.asarray(x)
        if x.ndim == 0:
            raise layer_error(self.name, "expected an array with at least one axis, got a scalar")
        return x

    def forward(self, params, state, x, *, key, train):
        return jnp.reshape(x, (size(x.shape),)), state
