"""Dropout: randomly zero units while training so no unit can be relied on alone."""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from lamina._src.core.errors import layer_error
from lamina._src.core.layer import Builtin, check_input_shape, check_key, frozen


@frozen
class Dropout(Builtin):
    """Inverted dropout: zeroes each unit with probability `rate`, scales the rest.

    Kept units are divided by `1 - rate`, so the expected output equals the
    input and inference (`key=None`) is the identity with no rescaling.

    Args:
      rate: probability of dropping a unit, in `[0, 1)`.

    A `Layer` without params. `apply(params, x, key=None)` returns `x`; with a
    PRNG key it draws a mask from that key (same key, same mask).

    Raises:
      ValueError: `rate` outside `[0, 1)`.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> layer = lm.Dropout(0.5)
      >>> _, params = layer.init(jax.random.key(0), (6,))
      >>> x = jnp.ones(6)
      >>> bool((layer.apply(params, x) == x).all())              # no key: identity
      True
      >>> y = layer.apply(params, x, key=jax.random.key(1))     # a key: dropped or doubled
      >>> sorted(set(y.tolist())) in ([0.0, 2.0], [0.0], [2.0])
      True
    """

    rate: float

    def __post_init__(self):
        rate = self.rate
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
            raise layer_error(
                "Dropout", f"rate must be a number in [0, 1), got {rate!r}", TypeError
            )
        rate = float(rate)
        if not 0.0 <= rate < 1.0:
            raise layer_error("Dropout", f"rate must be in [0, 1), got {rate}")
        object.__setattr__(self, "rate", rate)

    stochastic = True
    batch_polymorphic = True  # without a key it is the identity; with one, vmapped

    @property
    def name(self) -> str:
        return f"Dropout({self.rate})"

    def init(self, key, input_shape):
        return check_input_shape(self.name, input_shape), ()

    def apply(self, params, x, *, key=None):
        if key is None or self.rate == 0.0:
            return x
        check_key(self.name, key)
        keep = jax.random.bernoulli(key, 1.0 - self.rate, jnp.shape(x))
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))
